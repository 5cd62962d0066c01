import pytest

from mimeifs.engine.db import Store


@pytest.fixture
def store(tmp_path):
    s = Store.create(str(tmp_path / "store"), map_size=1 << 30)
    yield s
    s.close()

"""Network settings: the store's config file under command-line options."""

import pytest

from mimeifs.daemon import DaemonConfig, net_config
from mimeifs.net.config import ConfigError, load, parse_addr


def test_addresses():
    assert parse_addr("127.0.0.1:4001") == ("127.0.0.1", 4001)
    assert parse_addr("[::1]:9") == ("::1", 9)
    for bad in ("127.0.0.1", ":80", "h:0", "h:70000", "", "a b:1"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


def test_file_then_options(tmp_path):
    (tmp_path / "config.toml").write_text('[net]\nlisten = "127.0.0.1:4001"\npeers = ["127.0.0.1:4002"]\n'
                                          'default_credit = "10MiB"\nfollow = 2\nmetering = false\n')
    c = load(str(tmp_path))
    assert c.listen == ("127.0.0.1", 4001) and c.peers == [("127.0.0.1", 4002)]
    assert c.default_credit == 10 << 20 and c.follow == 2.0 and c.metering is False
    c = load(str(tmp_path), listen="127.0.0.1:5000", peers=None)
    assert c.listen == ("127.0.0.1", 5000) and c.peers == [("127.0.0.1", 4002)]


@pytest.mark.parametrize("text", ['[net]\nlisten = "nope"\n', '[net]\nfollw = 1\n', '[net]\nmetering = 1\n',
                                  '[net]\nfollow = -1\n', '[net\n'])
def test_bad_settings_are_refused(tmp_path, text):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError):
        load(str(tmp_path))


def test_no_listen_no_peer_means_no_network(tmp_path):
    assert net_config(DaemonConfig(str(tmp_path))) is None
    c = net_config(DaemonConfig(str(tmp_path), extra={"net": {"listen": "127.0.0.1:4001", "peers": []}}))
    assert c.listen == ("127.0.0.1", 4001)

"""The README stands alone (issue 11 item 12): a clone of the project has no ``../shared``,
so the README must not send readers there, must say what a MiMei is, and every repository
path it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_points_at_nothing_outside_the_repository():
    assert "../shared" not in README and "DESIGN.md" not in README
    assert not re.search(r"\]\((\.\./|/work/)", README)            # no links out of the clone


def test_readme_says_what_a_mimei_is_and_names_the_layers():
    model = README.split("## The MiMei model in short", 1)[1].split("\n## ", 1)[0]
    for word in ("ID", "mark", "cur", "backup", "version", "release", "fork", "reference",
                 "Mac files", "ledger", "letters", "pulse", "engine", "view", "door"):
        assert word in model, word


def test_every_repository_path_the_readme_names_exists():
    paths = set(re.findall(r"`((?:tools|mimeifs|tests)/[A-Za-z0-9_./-]*)`", README))
    assert paths
    assert [p for p in paths if not (REPO / p).exists()] == []

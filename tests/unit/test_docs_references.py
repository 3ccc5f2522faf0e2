"""What README.md and docs/ point at exists: every test file they name, and every file their
relative links reach (a renamed test or a moved doc fails here, not in a reader's hands)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_test_file_the_docs_name_exists():
    named = {(doc.name, path) for doc in DOCS for path in re.findall(r"tests/[\w/]+\.py", doc.read_text())}
    assert len(named) > 20  # the docs do name their evidence
    missing = sorted((doc, path) for doc, path in named if not (ROOT / path).is_file())
    assert not missing, missing


def test_every_relative_link_of_the_docs_reaches_a_file():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append((doc.name, target))
    assert not missing, missing

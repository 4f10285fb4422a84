"""The docs stand alone: every relative link of README.md and docs/*.md leads to a file
(and heading) of the repository, and no doc cites a file that is not in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target): the target up to a space or ")"; images too
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Files of the project's working notes that a clone does not have.
NOT_IN_A_CLONE = ("DESIGN.md", "PERF-NOTES", "test_index_cli.py")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_anchor(h) for h in HEADING.findall(FENCE.sub("", doc.read_text()))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(doc: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        missing_heading = linked.suffix == ".md" and bool(anchor)
        if not linked.exists() or (missing_heading and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == [], f"{doc.name}: links that lead nowhere: {broken}"


SOURCES = [
    ROOT / "pyproject.toml",
    *(
        path
        for folder in ("index", "service", "trainer", "recall", "bench", "docker")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".js", ".sh", ".yml", ".conf") and "static" not in path.parts
    ),
]


@pytest.mark.parametrize("doc", [*DOCS, *SOURCES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_files_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert [name for name in NOT_IN_A_CLONE if name in text] == []

"""README.md and docs/: every relative link leads to a file that exists, and to a heading that exists in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return found


def links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
        found += [(page.relative_to(ROOT).as_posix(), target) for target in LINK.findall(text)
                  if not re.match(r"[a-z]+:", target) and re.search(r"[./#]", target)]  # a path, not maths
    return found


@pytest.mark.parametrize(("page", "target"), links(), ids=[f"{p} -> {t}" for p, t in links()])
def test_relative_links_resolve(page, target):
    path, _, anchor = target.partition("#")
    destination = (ROOT / page).parent / path if path else ROOT / page
    assert destination.exists(), f"{page}: {target}: no such file"
    if anchor and destination.suffix == ".md":
        assert anchor in anchors(destination), f"{page}: {target}: no such heading"


def test_the_documentation_pages_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []

"""The README's links into docs/ lead somewhere (mkdocs build --strict checks the links between pages)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _anchor(heading: str) -> str:
    """Python-Markdown's toc slug of a heading, as MkDocs makes it (code marks dropped)."""
    value = unicodedata.normalize("NFKD", heading.replace("`", ""))
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def _links() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"\]\(([^)\s]+)\)", text)
    return [tuple(link.partition("#")[::2]) for link in found if not re.match(r"[a-z]+://", link)]


@pytest.mark.parametrize(("path", "anchor"), _links(), ids=lambda value: value or "-")
def test_readme_links_lead_to_a_file_and_heading(path, anchor):
    target = ROOT / path
    assert target.is_file(), f"README links to {path}, which does not exist"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
        assert anchor in {_anchor(h) for h in headings}, f"{path} has no heading for #{anchor}"


def test_every_docs_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert {p.name for p in (ROOT / "docs").glob("*.md")} == set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.M))

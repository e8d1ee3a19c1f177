"""The README is a newcomer's path; the reference lives in docs/, and every link between them resolves."""

import re

from tests.helpers import ROOT


def test_the_readme_is_short_enough_to_read_top_to_bottom():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 350


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_readme_links_every_page_of_the_reference():
    readme = (ROOT / "README.md").read_text()
    assert [page.name for page in sorted((ROOT / "docs").glob("*.md")) if f"docs/{page.name}" not in readme] == []

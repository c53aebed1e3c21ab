"""The docs a newcomer reads: a README of at most 300 lines whose every link resolves, and the docs/ pages,
which mkdocs-material builds with --strict (a broken link or anchor fails the build)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slugs(markdown: str) -> set[str]:
    """The anchors of a page's headings, as mkdocs' toc extension writes them (outside code blocks)."""
    out, fence = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            text = re.sub(r"[^\w\s-]", "", line.lstrip("#").strip().lower())
            out.add(re.sub(r"\s+", "-", text).strip("-"))
    return out


def test_the_readme_is_short_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    links = [link for link in LINK.findall(readme) if not link.startswith(("http://", "https://", "mailto:"))]
    assert len(links) >= 12  # the docs pages, the findings page, ...
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path if path else REPO / "README.md"
        assert target.exists(), link
        if anchor:
            assert anchor in slugs(target.read_text()), link


def _mkdocs(tmp_path, root):
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e .[docs])")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_mkdocs_builds_the_docs_strictly_with_search(tmp_path):
    out = _mkdocs(tmp_path, REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "search" / "search_index.json").stat().st_size > 10_000
    for page in (REPO / "docs").glob("*.md"):
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / name).exists(), page.name
    assert "findings:start" in (REPO / "docs" / "findings.md").read_text()


def test_a_broken_anchor_fails_the_strict_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy2(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [nowhere](strategies.md#no-such-heading).\n")
    out = _mkdocs(tmp_path, copy)
    assert out.returncode != 0 and "no-such-heading" in out.stderr

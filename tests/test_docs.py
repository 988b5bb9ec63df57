"""The README and docs/ as a reader meets them: the README stays short, every link stays inside the repository
(or goes to a public URL), every page is in the site's nav, and every Python block marked runnable in docs/ runs.

A block is runnable when the HTML comment `<!-- runnable -->` stands right before its ```python fence
(docs/testing.md). The README's own example is run by tests/test_api.py. `make docs` checks the links between
pages and their anchors with mkdocs itself; these checks need no mkdocs, so `make test` runs them too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))

MARKER = re.compile(r"^<!--\s*runnable\s*-->[ \t]*$", re.M)  # on a line of its own; in prose it is only named
RUNNABLE = re.compile(r"^<!--\s*runnable\s*-->[ \t]*\n```python\n(.*?)\n```", re.S | re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`|^(?: {4}|\t)[^\n]*", re.S | re.M)  # fenced, inline and indented code
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and [text](target "title")
COMMANDS = ("dsee-tune", "dsee-prune", "dsee-export", "dsee-bench", "dsee-serve")


def _runnable_blocks() -> list:
    blocks = []
    for page in PAGES:
        for i, code in enumerate(RUNNABLE.findall(page.read_text())):
            blocks.append(pytest.param(code, id=f"{page.relative_to(DOCS)}#{i}"))
    return blocks


@pytest.mark.parametrize("code", _runnable_blocks())
def test_every_runnable_block_in_docs_runs(code, tmp_path):
    """In a fresh directory and a fresh interpreter, offline, as a reader would paste it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_runnable_marker_stands_before_a_python_block():
    """A marker before anything else would leave its example untested without a word."""
    for page in PAGES:
        text = page.read_text()
        assert len(MARKER.findall(text)) == len(RUNNABLE.findall(text)), (
            f"{page.relative_to(ROOT)}: a <!-- runnable --> marker is not directly followed by a ```python block"
        )


def test_the_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move reference text to docs/ (at most 300)"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_leaves_the_repository(path):
    """Links are relative paths inside the repository or public http(s) URLs; nothing names ../shared, which is
    beside the project, not in it."""
    text = path.read_text()
    assert "../shared" not in text, (
        f"{path.relative_to(ROOT)} points at ../shared, which is not in the repository"
    )
    for target in LINK.findall(CODE.sub("", text)):
        if re.match(r"https?://", target) or target.startswith("#"):
            continue
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{path.relative_to(ROOT)}: link to {target}"
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.is_relative_to(ROOT), f"{path.relative_to(ROOT)}: link {target} leaves the repository"
        assert file.exists(), f"{path.relative_to(ROOT)}: link {target} points at nothing"


def test_every_docs_page_is_in_the_nav():
    """mkdocs --strict fails on an omitted page too; this says which, without mkdocs installed."""
    nav = set(re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert pages - nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"


def test_the_readme_links_each_command_to_its_page_and_shares_its_quickstart():
    text = README.read_text()
    for command in COMMANDS:
        assert f"](docs/commands/{command}.md)" in text, (
            f"README.md's command table has no link for {command}"
        )
        assert (DOCS / "commands" / f"{command}.md").is_file(), command
    # docs/python-api.md includes the quickstart from the README between these markers (pymdownx.snippets).
    start, end = text.find("--8<-- [start:quickstart]"), text.find("--8<-- [end:quickstart]")
    assert 0 <= start < text.find("<!-- python-api:start -->") < text.find("<!-- python-api:end -->") < end
    assert '--8<-- "README.md:quickstart"' in (DOCS / "python-api.md").read_text()

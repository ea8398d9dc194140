"""The front page and the manuals cannot go stale: every ``gradmatch`` command they show parses
with the real argument parser, and every relative link and image points at something that
exists (a heading, for links with an ``#anchor`` into a markdown file)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gradmatch.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\S*/)?gradmatch\s")


def commands(page: Path):
    """Every ``gradmatch ...`` command line of ``page``: in code blocks (continuation lines
    joined, comments dropped) and inline code that starts with ``.venv/bin/gradmatch``;
    ``...`` marks an elided command, skipped."""
    text = page.read_text()
    found = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [line.strip() for line in joined.splitlines() if COMMAND.match(line.strip())]
    # inline code: a copy-paste command starts with the script's path (`gradmatch train` alone
    # names a subcommand); usage syntax ([--flag], <placeholder>, ...) is not a command
    found += [span.strip() for span in INLINE.findall(FENCE.sub("", text))
              if span.startswith(".venv/bin/gradmatch ")]
    return [c for c in found if not any(m in c for m in ("...", "$(", "<", "["))]


def argv_of(command: str):
    words = shlex.split(command, comments=True)
    while "=" in words[0]:  # VAR=value prefixes
        words.pop(0)
    assert words[0].endswith("gradmatch"), command
    end = next((i for i, w in enumerate(words) if w in ("|", "&&", ";", ">")), len(words))
    return words[1:end]


CASES = [(page, c) for page in PAGES for c in commands(page)]


def test_the_pages_show_commands_and_the_front_page_is_short():
    assert (ROOT / "docs").is_dir() and len(PAGES) >= 10
    assert len(CASES) >= 20
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    front = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:  # every manual one click from the front page
        assert f"(docs/{page.name})" in front, page.name


@pytest.mark.parametrize("page,command", CASES,
                         ids=[f"{p.name}:{i}" for i, (p, _) in enumerate(CASES)])
def test_every_gradmatch_command_shown_parses(page, command):
    parser = build_parser()
    try:
        parser.parse_args(argv_of(command))
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return
        pytest.fail(f"{page.name}: `{command}` does not parse (exit {exit_.code})")


def _anchors(page: Path):
    """GitHub's heading anchors of a markdown page."""
    anchors = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_image_exists(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_file_order_of_the_suite_names_existing_files():
    """conftest.FILE_SECONDS orders the longest test files first; a renamed file would silently
    drop back among the short ones."""
    from conftest import FILE_SECONDS

    missing = [name for name in FILE_SECONDS if not (ROOT / "tests" / name).is_file()]
    assert not missing, f"tests/conftest.py FILE_SECONDS names files that do not exist: {missing}"
    assert list(FILE_SECONDS.values()) == sorted(FILE_SECONDS.values(), reverse=True)

"""The commands in README.md and docs/ are the ones the code has: every flag a `python -m MODULE` line names
is in that module's --help, and every `make TARGET` is a Makefile target."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
COMMAND = re.compile(r"python -m ([a-z_]+(?:\.[a-z_]+)+)")
PROJECT = ("pipeline.", "training.", "swapper.", "demo")


def commands(text: str) -> list[tuple[str, str]]:
    """(module, the command's text with its continuation lines) for each `python -m` in code blocks."""
    found = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)  # backslash continuations make one line
        for line in joined.splitlines():
            for m in COMMAND.finditer(line):
                rest = line[m.end() :].split("python -m")[0].split("#")[0]
                if m.group(1).startswith(PROJECT):
                    found.append((m.group(1), rest))
    return found


@cache
def help_text(module: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0, module
    return out.getvalue()


CASES = sorted(
    {(page.relative_to(REPO).as_posix(), module, rest) for page in PAGES for module, rest in commands(page.read_text())}
)


@pytest.mark.parametrize(("page", "module", "command"), CASES, ids=[f"{p}:{m}" for p, m, _ in CASES])
def test_every_flag_a_page_names_is_in_the_modules_help(page, module, command):
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command))
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text(module)))
    assert flags <= known, f"{page}: python -m {module}: {sorted(flags - known)} not in its --help"


def test_every_make_target_a_page_names_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    named = {(p.name, t) for p in PAGES for t in re.findall(r"`make ([a-z][a-z-]*)", p.read_text())}
    assert {t for _, t in named} <= targets, sorted((p, t) for p, t in named if t not in targets)
    assert len(CASES) > 15  # the pages do name commands: the extraction finds them

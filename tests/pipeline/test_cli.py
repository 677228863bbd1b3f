"""The one CLI layer: every config field has its flag, defaults agree, and bad input is one line, status 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from pipeline import caption, card, embed, publish
from pipeline.cli import build_parser, field_comments
from swapper import export

REPO = Path(__file__).resolve().parents[2]

STAGES = [
    ("pipeline.caption", caption.CaptionConfig, caption.__doc__),
    ("pipeline.embed", embed.EmbedConfig, embed.__doc__),
    ("pipeline.card", card.CardConfig, card.__doc__),
    ("pipeline.publish", publish.PublishConfig, publish.__doc__),
    ("swapper.export", export.ExportConfig, export.__doc__),
]


@pytest.mark.parametrize(("module", "cls", "doc"), STAGES, ids=[s[0] for s in STAGES])
def test_every_field_has_a_flag_with_the_dataclass_default_and_its_comment(module, cls, doc):
    parser = build_parser(module, doc, cls)
    by_dest = {a.dest: a for a in parser._actions}
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        action = by_dest[f.name]  # a KeyError here is a field without a flag
        assert action.help and comments.get(f.name), f"{module}: {f.name} has no help"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert action.required, f.name
        elif hints[f.name] is bool and f.default is True:
            assert action.option_strings[0].startswith("--no-") and action.default is True, f.name
        elif typing.get_origin(hints[f.name]) is tuple:
            assert action.default is None and f.default_factory is dataclasses.MISSING and f.default == (), f.name
        else:
            assert action.default == f.default, f"{module}: --{f.name} defaults to {action.default!r}"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        ("pipeline.caption", ["--source", "folder", "--input", ".", "--output", "x", "--shard-size", "0"],
         "--shard-size must be >= 1"),
        ("pipeline.caption", ["--source", "nope", "--input", ".", "--output", "x"], "invalid choice: 'nope'"),
        ("pipeline.embed", ["--dataset", "x", "--batch-size", "many"], "invalid int value: 'many'"),
        ("pipeline.embed", ["--dataset", "/nonexistent/dataset"], "has no plan.json"),
        ("pipeline.publish", ["--dataset", "x", "--repo-id", "no-slash"], "--repo-id"),
        ("pipeline.card", ["--dataset", "x", "--template", "/nonexistent.md"], "no such file"),
        ("swapper.export", ["--onnx", "x.onnx"], "--checkpoint"),
        ("training.train", ["--set", "batch_size=0", "--data", "x", "--output", "y"], "batch_size"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.count(".") == 1 else None,
)  # fmt: skip
def test_bad_flags_and_configs_are_one_line_and_exit_2(module, args, says):
    out = _run(module, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), out.stderr
    assert says in lines[0]
    assert "Traceback" not in out.stderr


def test_help_lists_every_flag():
    out = _run("pipeline.caption", "--help")
    assert out.returncode == 0
    for f in dataclasses.fields(caption.CaptionConfig):
        flag = "--no-progress" if f.name == "progress" else "--" + f.name.replace("_", "-")
        assert flag in out.stdout, flag

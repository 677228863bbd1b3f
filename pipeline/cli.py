"""One CLI layer for every stage: the parser is built from the stage's frozen config dataclass.

    fields -> flags   `shard_size: int = 1000  # samples per shard` becomes `--shard-size N` (default
                      1000, help "samples per shard"); a field without a default is a required flag
    bool              False by default: `--name` sets it; True by default: `--no-name` clears it
    X | None          an optional X, default None
    tuple[str, ...]   a repeatable flag (`clip_tags` -> `--clip-tag`, given once per value)
    field metadata    `flag` (another flag name), `choices`, `help` (instead of the comment)

`stage_main` parses, builds the config (whose `__post_init__` checks values), runs the stage and
prints its summary as one JSON line. A bad flag, a bad value or one of the stage's known errors
prints one line, `<prog>: error: <message>`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class StageFailed(SystemExit):
    """Exit status 2 with a one-line message (already printed); `str()` is the message, for callers."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(prog: str, message: str) -> NoReturn:
    line = f"{prog}: error: {' '.join(message.split())}"  # one line, whatever the exception's text held
    print(line, file=sys.stderr)
    raise StageFailed(line)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2 (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog.removeprefix("python -m "), f"{message} (see --help)")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the `# comment` on its line (or on any line of a field written over several)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    name: str | None = None
    first: tokenize.TokenInfo | None = None  # the first token of the current logical line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NEWLINE:
            name, first = None, None
        elif tok.type == tokenize.COMMENT:
            if name is not None and name not in comments:
                comments[name] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL):
            if first is None:
                first = tok
            elif name is None and first.type == tokenize.NAME and tok.string == ":" and tok.start[0] == first.start[0]:
                name = first.string
    return comments


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _flag(f: dataclasses.Field, tp: Any) -> str:
    if "flag" in f.metadata:
        return str(f.metadata["flag"])
    name = f.name[:-1] if typing.get_origin(tp) is tuple and f.name.endswith("s") else f.name
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _scalar_type(tp: Any) -> Callable[[str], Any]:
    if tp in (int, float, str, Path):
        return tp
    raise TypeError(f"no command-line type for {tp!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass `cls` (except `skip`)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = _flag(f, tp)
        default = _default(f)
        help_text = f.metadata.get("help", comments.get(f.name, ""))
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        if tp is bool:
            if default is True:
                kwargs["help"] = f"turn off: {help_text}" if help_text else None
                parser.add_argument("--no-" + flag[2:], action="store_false", **kwargs)
            else:
                parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            kwargs.update(action="append", type=_scalar_type(item), default=None)
            parser.add_argument(flag, **kwargs)
            continue
        kwargs["type"] = _scalar_type(tp)
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None and help_text:
                kwargs["help"] = f"{help_text} (default: {default})"
        parser.add_argument(flag, **kwargs)


def config_from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        if typing.get_origin(_unwrap_optional(hints[f.name])[0]) is tuple:
            value = tuple(value or ())
        values[f.name] = value
    return cls(**values)


def build_parser(prog: str, doc: str | None, cls: type) -> OneLineParser:
    description = (doc or "").split("\n\n")[0]
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls)
    return parser


def parse_config(prog: str, doc: str | None, cls: type, argv: list[str] | None = None) -> Any:
    """Parse `argv` into a `cls`; a value `__post_init__` refuses is a one-line error (exit 2)."""
    parser = build_parser(prog, doc, cls)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(cls, ns)
    except ValueError as e:
        parser.error(str(e))


def stage_main(
    prog: str,
    config: Callable[[], Any],
    run: Callable[[Any], dict[str, Any]],
    known_errors: tuple[type[BaseException], ...],
    summary_key: str,
) -> dict[str, Any]:
    """Build the config, run the stage, print its summary; known errors become one line and exit 2."""
    cfg = config()
    try:
        summary = run(cfg)
    except known_errors as e:
        fail(prog, str(e))
    print(json.dumps({summary_key: summary}), file=sys.stderr)
    return summary

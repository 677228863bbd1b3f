"""The dataset directory: the on-disk contract between the stages (docs/design.md §3).

    DATASET/
      plan.json                         which inputs belong to each shard; written once
      shards/<name>-NNNNNN.tar          WebDataset shard
      stats/NNNNNN.json                 written LAST: a shard is done iff this file exists
      errors/NNNNNN.jsonl               one line per input that failed
      embeddings/<clip-tag>/NNNNNN.parquet
      README.md                         the dataset card

Every file is written under a temporary name in its own folder and moved into place with
`os.replace`, so a crash leaves either the complete file or nothing. Temporary names start with a
dot and end in `.tmp`, so no reader ever sees a half-written `*.tar`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize(part: str) -> str:
    """Every character outside [A-Za-z0-9_-] becomes '-' (no dots: WebDataset splits on them)."""
    return _KEY_UNSAFE.sub("-", part)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_detail(text: str) -> str:
    """An error detail without object addresses (`<_io.BytesIO object at 0x7f...>`), so identical runs
    write identical errors files."""
    return _ADDRESS.sub("", text)


def make_key(dataset: str, identity: str | None, stem: str) -> str:
    """`<dataset>_<identity>_<stem>`; a sample without a known identity uses `unknown`."""
    return "_".join(sanitize(p) for p in (dataset, identity if identity is not None else "unknown", stem))


def unique_keys(keys: list[str]) -> list[str]:
    """Make keys unique in listing order: the second `k` becomes `k-2`, and so on.

    Sanitising can map different names to one key (`a b.jpg` and `a-b.png`); the listing is sorted,
    so the suffixes are deterministic.
    """
    seen: set[str] = set(keys)
    counts: dict[str, int] = {}
    out = []
    for key in keys:
        n = counts.get(key, 0) + 1
        counts[key] = n
        if n == 1:
            out.append(key)
            continue
        candidate = f"{key}-{n}"
        while candidate in seen:
            n += 1
            candidate = f"{key}-{n}"
        counts[key] = n
        seen.add(candidate)
        out.append(candidate)
    return out


# ---------------------------------------------------------------- atomic writes

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (`/proc/self/status`);
    elsewhere set and restored under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a hidden temporary file beside `path`, fsync, then `os.replace` into place.

    The file ends with the mode a plain `open()` would give (0666 less the umask): `mkstemp` makes
    it 0600, which colleagues and service accounts on a shared cluster could not read.
    On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, so reruns write identical bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (dumps_json(obj) + "\n").encode("utf-8"))


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporaries_of(*targets: Path) -> None:
    """Delete what killed writers left of these files (`atomic_open`'s `.<name>.*.tmp`).

    Only the process that owns the targets may call this: another rank may be writing its own.
    """
    for target in targets:
        for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class DatasetDir:
    """Paths inside one dataset directory."""

    root: Path

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def stats_dir(self) -> Path:
        return self.root / "stats"

    @property
    def errors_dir(self) -> Path:
        return self.root / "errors"

    @property
    def embeddings_root(self) -> Path:
        return self.root / "embeddings"

    def shard_path(self, name: str, index: int) -> Path:
        return self.shards_dir / f"{name}-{index:06d}.tar"

    def stats_path(self, index: int) -> Path:
        return self.stats_dir / f"{index:06d}.json"

    def errors_path(self, index: int) -> Path:
        return self.errors_dir / f"{index:06d}.jsonl"

    def embeddings_dir(self, tag: str) -> Path:
        return self.embeddings_root / tag

    def embeddings_path(self, tag: str, index: int) -> Path:
        return self.embeddings_dir(tag) / f"{index:06d}.parquet"

    def is_done(self, index: int) -> bool:
        return self.stats_path(index).is_file()

    def load_plan(self) -> dict[str, Any]:
        if not self.plan_path.is_file():
            raise FileNotFoundError(f"{self.root} has no plan.json: is it a dataset made by pipeline.caption?")
        with open(self.plan_path, encoding="utf-8") as f:
            return json.load(f)

    def load_stats(self, index: int) -> dict[str, Any]:
        with open(self.stats_path(index), encoding="utf-8") as f:
            return json.load(f)


def clip_tag(model: str, pretrained: str) -> str:
    """Folder name under embeddings/ for one CLIP model + weights, e.g. `ViT-B-32__openai`."""
    base = Path(model).stem if model.endswith(".json") else model
    weights = Path(pretrained).stem if os.sep in pretrained or pretrained.endswith((".pt", ".bin")) else pretrained
    return f"{sanitize(base)}__{sanitize(weights)}"

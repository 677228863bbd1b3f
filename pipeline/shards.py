"""Deterministic WebDataset shard writing, and member-name checks for reading.

Tars are written with Python's `tarfile` and fixed metadata (mtime 0, uid/gid 0, mode 0644), so an
interrupted-then-resumed run produces the same bytes as an uninterrupted one. A shard is written to
a hidden temporary file and renamed when complete.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.dataset import atomic_open

# A member is `<key>.<ext>` where the key holds no dots (DESIGN §3) and the extension is a short
# dotted suffix such as `jpg`, `json` or `mask.png`.
_MEMBER = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9]+(\.[A-Za-z0-9]+)?$")


class UnsafeTarMember(ValueError):
    """A tar member with a path, a link, or a name outside the key contract."""


@dataclass
class ShardSample:
    """One sample as it goes into a shard: key plus its members, extension -> bytes."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: Path, samples: Iterable[ShardSample]) -> int:
    """Write samples to `path` atomically. Returns the number of samples written."""
    n = 0
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, data in sample.members.items():
                name = f"{sample.key}.{ext}"
                check_member_name(name)
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            n += 1
    return n


def check_member_name(name: str) -> None:
    if not _MEMBER.match(name):
        raise UnsafeTarMember(f"unsafe or malformed tar member name: {name!r}")


def check_member(info: tarfile.TarInfo) -> None:
    """Refuse anything but a regular file with a flat `<key>.<ext>` name."""
    if not info.isfile():
        raise UnsafeTarMember(f"tar member {info.name!r} is not a regular file")
    check_member_name(info.name)


def iter_shard(path: Path) -> Iterator[ShardSample]:
    """Read a shard back, grouping members by key, checking every member name."""
    current: ShardSample | None = None
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            check_member(info)
            key, ext = info.name.split(".", 1)
            f = tar.extractfile(info)
            assert f is not None  # regular file, checked above
            data = f.read()
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = ShardSample(key)
            current.members[ext] = data
    if current is not None:
        yield current


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """The `.json` member of every sample in a shard, in order."""
    return [json.loads(s.members["json"]) for s in iter_shard(path)]

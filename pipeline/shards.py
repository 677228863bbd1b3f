"""Deterministic WebDataset shard writing, and member-name checks for reading.

Tars are written with Python's `tarfile` and fixed metadata (mtime 0, uid/gid 0, mode 0644), so an
interrupted-then-resumed run produces the same bytes as an uninterrupted one. A shard is written to
a hidden temporary file and renamed when complete.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import atomic_open

# A member is `<key>.<ext>` where the key holds no dots (docs/design.md §3) and the extension is a short
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


_BLOCK = 512
_REGULAR = (b"0", b"\0")
_EXTENDED = (b"x", b"g", b"L", b"K")  # PAX and GNU long-name headers: left to tarfile


_ZEROS = bytes(_BLOCK)


def _field(header: bytes, start: int, end: int) -> bytes:
    return header[start:end].split(b"\0", 1)[0]


def _stored_checksum(header: bytes) -> int:
    """The checksum a header records; -1 (never a sum) where the field is not octal."""
    try:
        return int(_field(header, 148, 156).strip() or b"0", 8)
    except ValueError:
        return -1


def _check_checksums(buf: bytes | mmap.mmap, positions: list[int], stored: list[int]) -> None:
    """Every header's checksum at once (summing in numpy, not per header in Python); the checksum
    field itself counts as spaces. The first damaged header is the error."""
    if not positions:
        return
    # copied out (512 bytes each), so no array keeps a pointer into an mmap that is about to close
    headers = b"".join([buf[p : p + _BLOCK] for p in positions])
    blocks = np.frombuffer(headers, dtype=np.uint8).reshape(-1, _BLOCK)  # (N, 512)
    sums = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    bad = np.flatnonzero(sums != np.asarray(stored, dtype=np.int64))
    if bad.size:
        raise tarfile.ReadError(f"bad tar header checksum at byte {positions[bad[0]]}")


def _verify_so_far(buf: bytes | mmap.mmap, positions: list[int], stored: list[int], pos: int, header: bytes) -> None:
    """Before the scan gives up at `pos`: the earliest damaged header so far, if any, is the error."""
    _check_checksums(buf, [*positions, pos], [*stored, _stored_checksum(header)])


def _scan(buf: bytes | mmap.mmap) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every member of a plain ustar archive, names and types checked.

    Our own shards are plain ustar, and parsing the 512-byte headers directly is several times
    cheaper than `tarfile` per member, which matters in the training reader. Returns None for
    anything this parser does not handle (extended headers, base-256 sizes), and the caller falls
    back to `tarfile`. Header checksums are verified all at once at the end, or, where the scan stops
    early (a header it cannot parse or leaves to tarfile), for every header up to there first: a
    damaged header is reported as damaged, at its own position, and never silently ends the read.
    """
    out: list[tuple[str, int, int]] = []
    positions: list[int] = []
    stored: list[int] = []
    pos, end = 0, len(buf)
    while pos + _BLOCK <= end:
        header = buf[pos : pos + _BLOCK]
        if header == _ZEROS:  # end-of-archive marker
            break
        if header[124] & 0x80 or header[156:157] in _EXTENDED:
            _verify_so_far(buf, positions, stored, pos, header)  # tarfile stops quietly at a damaged header
            return None
        try:
            out.append(_member(header, pos, end))
            stored.append(_stored_checksum(header))
        except (ValueError, tarfile.ReadError):  # UnsafeTarMember is a ValueError
            _verify_so_far(buf, positions, stored, pos, header)  # a bad size sends the scan into data blocks
            raise
        positions.append(pos)
        _, offset, size = out[-1]
        pos = offset + -(-size // _BLOCK) * _BLOCK
    _check_checksums(buf, positions, stored)
    if pos < end and end - pos < _BLOCK and buf[pos:end].strip(b"\0"):
        raise tarfile.ReadError(f"truncated tar header at byte {pos}")
    return out


def _member(header: bytes, pos: int, end: int) -> tuple[str, int, int]:
    """One plain ustar header's (name, data offset, size), its name, type and extent checked."""
    try:
        size = int(_field(header, 124, 136).strip() or b"0", 8)
    except ValueError:
        raise tarfile.ReadError(f"corrupt tar header at byte {pos}") from None
    name = _field(header, 0, 100).decode("utf-8", "replace")
    prefix = _field(header, 345, 500)
    if prefix:
        name = f"{prefix.decode('utf-8', 'replace')}/{name}"
    if header[156:157] not in _REGULAR:
        raise UnsafeTarMember(f"tar member {name!r} is not a regular file")
    check_member_name(name)
    if pos + _BLOCK + -(-size // _BLOCK) * _BLOCK > end:  # data is padded to whole blocks
        raise tarfile.ReadError(f"tar member {name!r} is truncated")
    return name, pos + _BLOCK, size


def _iter_members_tarfile(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            check_member(info)
            f = tar.extractfile(info)
            assert f is not None  # regular file, checked above
            yield info.name, f.read()


def iter_members(path: Path, exts: frozenset[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Every member of a shard as (name, bytes), in order; with `exts`, only members with those
    extensions are read (the others are skipped without copying). Every name is checked first."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise tarfile.ReadError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            members = _scan(buf)
            if members is None:
                for name, data in _iter_members_tarfile(path):
                    if exts is None or name.split(".", 1)[1] in exts:
                        yield name, data
                return
            for name, offset, size in members:
                if exts is None or name.split(".", 1)[1] in exts:
                    yield name, buf[offset : offset + size]


def iter_shard(path: Path) -> Iterator[ShardSample]:
    """Read a shard back, grouping members by key, checking every member name."""
    current: ShardSample | None = None
    for name, data in iter_members(path):
        key, ext = name.split(".", 1)
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

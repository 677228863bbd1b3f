"""Shard writing is atomic and deterministic; member names are checked on read."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.dataset import atomic_open
from pipeline.shards import ShardSample, UnsafeTarMember, iter_members, iter_shard, write_shard


def _samples(n=3):
    return [ShardSample(f"k{i}", {"jpg": b"x" * (i + 1), "json": b"{}", "txt": b"cap"}) for i in range(n)]


def test_roundtrip_and_identical_bytes(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    write_shard(a, _samples())
    write_shard(b, _samples())
    assert a.read_bytes() == b.read_bytes()  # fixed mtime/uid: reruns write the same bytes
    back = list(iter_shard(a))
    assert [s.key for s in back] == ["k0", "k1", "k2"]
    assert back[2].members == {"jpg": b"xxx", "json": b"{}", "txt": b"cap"}


def test_failed_write_leaves_nothing(tmp_path):
    def boom():
        yield _samples(1)[0]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "s.tar", boom())
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    p.write_text("old")
    with pytest.raises(ValueError), atomic_open(p, "w") as f:
        f.write("new")
        raise ValueError
    assert p.read_text() == "old"


@pytest.mark.parametrize("name", ["../evil.jpg", "/abs.jpg", "a/b.jpg", "noext", "a.b.c.d"])
def test_unsafe_member_refused_on_read(tmp_path, name):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeTarMember):
        list(iter_shard(path))


def test_symlink_member_refused(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("k.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeTarMember):
        list(iter_shard(path))


def _tar_bytes(path, members, fmt=tarfile.USTAR_FORMAT, pax=None):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if pax:
                info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data))


def test_pax_archives_fall_back_to_tarfile_with_the_same_result(tmp_path):
    members = [("k0.jpg", b"abc"), ("k0.json", b"{}"), ("k1.jpg", b"x" * 700), ("k1.json", b"[]")]
    plain, pax = tmp_path / "plain.tar", tmp_path / "pax.tar"
    _tar_bytes(plain, members)
    _tar_bytes(pax, members, tarfile.PAX_FORMAT, {"comment": "written by another tool"})
    assert b"comment=" in pax.read_bytes()  # really has extended headers
    assert list(iter_members(pax)) == list(iter_members(plain)) == members
    assert list(iter_members(plain, frozenset({"json"}))) == [members[1], members[3]]


def test_corrupt_header_and_truncation_are_errors(tmp_path):
    good = tmp_path / "g.tar"
    write_shard(good, _samples(2))
    data = bytearray(good.read_bytes())
    data[10] ^= 0xFF  # inside the first member's name: the header checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_shard(bad))
    # a later header changed to another valid name: only its checksum tells
    data = bytearray(good.read_bytes())
    second = 512 + -(-int(data[124:135], 8) // 512) * 512  # the second member's header
    name = bytes(data[second : second + 100]).split(b"\0")[0]
    data[second] = ord("z") if name[:1] != b"z" else ord("y")
    bad.write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match=f"checksum at byte {second}"):
        list(iter_shard(bad))
    # a later header's size shrunk (the scan then lands inside data), or its type made an extended
    # header (left to tarfile, which would stop there quietly): both are the damaged header, never fewer members
    for offset, value in ((124 + 9, ord("0")), (156, ord("x"))):
        data = bytearray(good.read_bytes())
        data[second + offset] = value if data[second + offset] != value else ord("1")
        bad.write_bytes(bytes(data))
        with pytest.raises(tarfile.ReadError, match=f"checksum at byte {second}"):
            list(iter_shard(bad))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: 512 + 1])  # a header whose data is missing
    with pytest.raises(tarfile.ReadError, match="truncated"):
        list(iter_shard(cut))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(tarfile.ReadError):
        list(iter_shard(empty))

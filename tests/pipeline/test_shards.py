"""Shard writing is atomic and deterministic; member names are checked on read."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.dataset import atomic_open
from pipeline.shards import ShardSample, UnsafeTarMember, iter_shard, write_shard


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

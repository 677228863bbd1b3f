"""Source layouts, key rules and deterministic listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline.dataset import make_key, unique_keys
from pipeline.sources import list_source


def _img(path: Path, color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def test_key_rules():
    assert make_key("vggface2-hq", "n000001", "0001_01") == "vggface2-hq_n000001_0001_01"
    # dots and anything outside [A-Za-z0-9_-] become '-': WebDataset splits member names at the first dot
    assert make_key("folder", "Jo Doe", "a.b c") == "folder_Jo-Doe_a-b-c"
    assert make_key("celeba-hq", None, "12") == "celeba-hq_unknown_12"
    assert "." not in make_key("x", "ümlaut.dir", "ö.ä")


def test_unique_keys_deterministic_suffixes():
    assert unique_keys(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    # a suffix never collides with an existing key
    assert unique_keys(["a", "a-2", "a"]) == ["a", "a-2", "a-3"]


def test_vggface2_layout_sorted(tmp_path):
    for ident in ["n000002", "n000001"]:
        for name in ["0002_01.jpg", "0001_01.jpg"]:
            _img(tmp_path / ident / name)
    (tmp_path / "n000001" / "notes.txt").write_text("not an image")
    recs = list_source("vggface2-hq", tmp_path)
    assert [r.source_path for r in recs] == [
        "n000001/0001_01.jpg",
        "n000001/0002_01.jpg",
        "n000002/0001_01.jpg",
        "n000002/0002_01.jpg",
    ]
    assert recs[0].key == "vggface2-hq_n000001_0001_01"
    assert {r.identity for r in recs} == {"n000001", "n000002"}
    assert all(r.mask_path is None for r in recs)


def test_folder_layout_identity_is_parent_and_collisions_resolved(tmp_path):
    _img(tmp_path / "alice" / "a.jpg")
    _img(tmp_path / "alice" / "a.png")  # same stem: keys must still be unique
    _img(tmp_path / "bob" / "deep" / "b.jpg")
    _img(tmp_path / "top.jpg")
    recs = list_source("folder", tmp_path)
    by_path = {r.source_path: r for r in recs}
    assert by_path["bob/deep/b.jpg"].identity == "deep"
    assert by_path["top.jpg"].identity is None
    keys = [r.key for r in recs]
    assert len(set(keys)) == len(keys)
    assert by_path["alice/a.jpg"].key == "folder_alice_a"
    assert by_path["alice/a.png"].key == "folder_alice_a-2"
    assert list_source("folder", tmp_path) == recs  # deterministic


def _celeba(root: Path, n: int = 12, masks: bool = True) -> None:
    for i in range(n):
        _img(root / "CelebA-HQ-img" / f"{i}.jpg")
    lines = ["idx orig_idx orig_file"] + [f"{i} {1000 + i} {1001 + i:06d}.jpg" for i in range(n)]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{1001 + i:06d}.jpg {i // 3 + 7}\n" for i in range(n)))
    (root / "list_eval_partition.txt").write_text("".join(f"{1001 + i:06d}.jpg {i % 3}\n" for i in range(n)))
    if masks:
        for i in range(n):
            d = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
            d.mkdir(parents=True, exist_ok=True)
            Image.new("L", (512, 512), 255).save(d / f"{i:05d}_skin.png")


def test_celeba_numeric_order_identities_masks(tmp_path):
    _celeba(tmp_path)
    recs = list_source("celeba-hq", tmp_path)
    assert [r.source_path for r in recs][:3] == ["CelebA-HQ-img/0.jpg", "CelebA-HQ-img/1.jpg", "CelebA-HQ-img/2.jpg"]
    assert recs[10].source_path == "CelebA-HQ-img/10.jpg"  # numeric, not string order
    assert recs[4].identity == "8" and recs[4].key == "celeba-hq_8_4"
    assert recs[11].mask_path == "CelebAMask-HQ-mask-anno/0/00011"


def test_celeba_split_and_missing_files(tmp_path):
    _celeba(tmp_path, masks=False)
    val = list_source("celeba-hq", tmp_path, split="val")
    assert [r.source_path for r in val] == [f"CelebA-HQ-img/{i}.jpg" for i in (1, 4, 7, 10)]
    assert all(r.mask_path is None for r in val)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        list_source("celeba-hq", tmp_path, split="train")
    # without identity files the identity is unknown, and keys still follow the rule
    (tmp_path / "identity_CelebA.txt").unlink()
    recs = list_source("celeba-hq", tmp_path)
    assert recs[0].identity is None and recs[0].key == "celeba-hq_unknown_0"


def test_missing_input_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_source("vggface2-hq", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="CelebA-HQ-img"):
        list_source("celeba-hq", tmp_path)

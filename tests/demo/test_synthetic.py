"""The synthetic face generator: real layouts, determinism, masks, and attributes that show."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.synthetic import CELEBA_PARTITION_RANGES, MASK_CLASSES, generate, main, mask_relpath

REQUIRED_MASKS = {"skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip", "hair", "neck"}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _attributes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "synthetic_attributes.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vgg")
    generate(root, "vggface2-hq", identities=4, per_identity=5, seed=0, size=96)
    return root


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("celeba")
    generate(root, "celeba-hq", identities=5, per_identity=3, seed=1, size=64)
    return root


@pytest.mark.parametrize("layout", ["vggface2-hq", "celeba-hq"])
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, layout):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, layout, identities=2, per_identity=2, seed=seed, size=64)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert images == [k for k in c if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images)


def test_vggface2_layout(vgg):
    files = sorted(p.relative_to(vgg).as_posix() for p in vgg.rglob("*.jpg"))
    expected = [f"n{i:06d}/{j:04d}_01.jpg" for i in range(1, 5) for j in range(1, 6)]
    assert files == expected
    with Image.open(vgg / files[0]) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 96))
    attrs = _attributes(vgg)
    assert [a["path"] for a in attrs] == expected
    assert all(a["identity"] == a["path"].split("/")[0] for a in attrs)


def test_default_sizes(tmp_path):
    assert generate(tmp_path / "v", "vggface2-hq", 1, 1)["size"] == 512
    with Image.open(tmp_path / "v" / "n000001" / "0001_01.jpg") as im:
        assert im.size == (512, 512)
    assert generate(tmp_path / "c", "celeba-hq", 1, 1)["size"] == 1024
    with Image.open(tmp_path / "c" / "CelebA-HQ-img" / "0.jpg") as im:
        assert im.size == (1024, 1024)


def test_attributes_vary_across_images_and_identity_stays(vgg):
    attrs = _attributes(vgg)
    assert len({a["yaw"] for a in attrs}) > 15 and len({a["pitch"] for a in attrs}) > 15  # of 20
    assert max(a["yaw"] for a in attrs) > 20 and min(a["yaw"] for a in attrs) < -20
    for field in ("expression", "glasses", "hat", "occluder", "lighting", "background"):
        assert len({a[field] for a in attrs}) > 1, field
    # identity traits are the same within an identity
    hair = {}
    for a in attrs:
        assert hair.setdefault(a["identity"], a["hair"]) == a["hair"]


def test_images_differ_between_pictures(vgg):
    arrays = [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(vgg.rglob("*.jpg"))]
    for i in range(len(arrays) - 1):
        assert np.abs(arrays[i] - arrays[i + 1]).mean() > 5


def test_celeba_lists_parse_and_agree(celeba):
    imgs = sorted(int(p.stem) for p in (celeba / "CelebA-HQ-img").glob("*.jpg"))
    assert imgs == list(range(15))

    lines = (celeba / "CelebA-HQ-to-CelebA-mapping.txt").read_text().splitlines()
    assert lines[0].split() == ["idx", "orig_idx", "orig_file"]
    rows = [line.split() for line in lines[1:]]
    assert [int(r[0]) for r in rows] == imgs
    assert all(r[2] == f"{int(r[1]) + 1:06d}.jpg" for r in rows)
    orig_file = {int(r[0]): r[2] for r in rows}
    assert len(set(orig_file.values())) == 15

    identity_of = dict(line.split() for line in (celeba / "identity_CelebA.txt").read_text().splitlines())
    split_of = dict(line.split() for line in (celeba / "list_eval_partition.txt").read_text().splitlines())
    assert set(identity_of) == set(split_of) == set(orig_file.values())

    attrs = _attributes(celeba)
    assert [a["path"] for a in attrs] == [f"CelebA-HQ-img/{i}.jpg" for i in imgs]
    for i, a in enumerate(attrs):
        assert identity_of[orig_file[i]] == a["identity"]
    # five identities of three images each; a split holds whole identities
    assert sorted(Counter(identity_of.values()).values()) == [3] * 5
    splits_per_identity = {
        ident: {split_of[f] for f, i in identity_of.items() if i == ident} for ident in identity_of.values()
    }
    assert all(len(s) == 1 for s in splits_per_identity.values())
    counts = Counter(split_of.values())
    assert set(counts) == {"0", "1", "2"} and counts["0"] > counts["1"] and counts["0"] > counts["2"]
    for f, s in split_of.items():
        lo, hi = CELEBA_PARTITION_RANGES[int(s)]
        assert lo <= int(f.split(".")[0]) - 1 < hi


def test_celeba_masks(celeba):
    attrs = _attributes(celeba)
    anno = celeba / "CelebAMask-HQ-mask-anno" / "0"
    for idx, a in enumerate(attrs):
        present = {p.name[6:-4] for p in anno.glob(f"{idx:05d}_*.png")}
        assert REQUIRED_MASKS <= present <= set(MASK_CLASSES)
        assert ("eye_g" in present) == a["glasses"]
        assert ("hat" in present) == a["hat"]
        for name in ("skin", "hair", "neck"):
            with Image.open(anno / f"{idx:05d}_{name}.png") as im:
                assert (im.mode, im.size) == ("L", (512, 512))
                arr = np.asarray(im)
            assert set(np.unique(arr).tolist()) == {0, 255}, name


def test_mask_folders_hold_2000_each():
    assert mask_relpath(1999, "skin") == "CelebAMask-HQ-mask-anno/0/01999_skin.png"
    assert mask_relpath(2000, "l_eye") == "CelebAMask-HQ-mask-anno/1/02000_l_eye.png"
    assert mask_relpath(29999, "hair") == "CelebAMask-HQ-mask-anno/14/29999_hair.png"


def _centroid_x(path: Path) -> float:
    arr = np.asarray(Image.open(path)) > 0
    return float(np.nonzero(arr)[1].mean())


def test_masks_follow_the_pose(celeba):
    """Yaw is visible: the nose sits off the face centre towards the side the head turns to."""
    anno = celeba / "CelebAMask-HQ-mask-anno" / "0"
    turned = [(i, a["yaw"]) for i, a in enumerate(_attributes(celeba)) if abs(a["yaw"]) > 15]
    assert len(turned) >= 3
    for idx, yaw in turned:
        offset = _centroid_x(anno / f"{idx:05d}_nose.png") - _centroid_x(anno / f"{idx:05d}_skin.png")
        assert np.sign(offset) == np.sign(yaw), (idx, yaw, offset)


def test_mask_matches_image(tmp_path):
    """Skin mask pixels in the image are skin-coloured, not background (no lighting change)."""
    generate(tmp_path, "celeba-hq", identities=6, per_identity=2, seed=5, size=512)
    attrs = _attributes(tmp_path)
    checked = 0
    for idx, a in enumerate(attrs):
        if a["lighting"] != "even":
            continue
        img = np.asarray(Image.open(tmp_path / a["path"]), dtype=np.float32)
        skin = np.asarray(Image.open(tmp_path / f"CelebAMask-HQ-mask-anno/0/{idx:05d}_skin.png")) > 0
        inside = img[skin].std(axis=0).mean()
        whole = img.reshape(-1, 3).std(axis=0).mean()
        assert inside < whole / 2, (idx, inside, whole)
        checked += 1
    assert checked >= 1


def test_cli(tmp_path, capsys):
    summary = main(
        ["--out", str(tmp_path), "--layout", "vggface2-hq", "--identities", "2", "--per-identity", "1", "--size", "48"]
    )
    assert summary["images"] == 2
    assert json.loads(capsys.readouterr().out)["images"] == 2
    assert (tmp_path / "n000002" / "0001_01.jpg").is_file()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--layout", "ffhq"])
    with pytest.raises(ValueError):
        generate(tmp_path, "vggface2-hq", identities=0, per_identity=1)

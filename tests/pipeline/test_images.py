"""Safe image loading: every odd input is converted correctly, every bad one gets its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import BadInput, build_celeba_mask, load_image
from tests.pipeline.badinputs import bad_and_odd_files, face_like, jpeg_bytes


@pytest.mark.parametrize("name", sorted(bad_and_odd_files()))
def test_each_bad_or_odd_input(name):
    data, reason = bad_and_odd_files()[name]
    if reason is not None:
        with pytest.raises(BadInput) as e:
            load_image(data, "jpg", 32)
        assert e.value.reason == reason
        return
    out = load_image(data, "jpg", 32)
    decoded = Image.open(io.BytesIO(out.data))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert out.transcoded_from is not None  # none of these is a plain RGB JPEG
    assert out.engine_image.mode == "RGB" and out.engine_image.size == (32, 32)
    assert decoded.size == (out.width, out.height)


def test_plain_rgb_jpeg_keeps_original_bytes():
    data = jpeg_bytes(face_like(64))
    out = load_image(data, "jpg", 32)
    assert out.data == data and out.transcoded_from is None
    # the same file into a PNG dataset is re-encoded losslessly from the decoded pixels
    png = load_image(data, "png", 32)
    assert png.transcoded_from == "JPEG/RGB"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.data))), np.asarray(Image.open(io.BytesIO(data))))


def test_exif_rotation_applied():
    data, _ = bad_and_odd_files()["rotated.jpg"]
    out = load_image(data, "jpg", 32)
    # stored 64 wide x 32 high with orientation 6 (rotate 90): upright it is 32 x 64
    assert (out.width, out.height) == (32, 64)
    assert "exif-orientation-6" in out.transcoded_from


def test_sixteen_bit_is_scaled_not_clipped():
    data, _ = bad_and_odd_files()["gray16.png"]
    out = load_image(data, "jpg", 32)
    arr = np.asarray(Image.open(io.BytesIO(out.data)).convert("L"), dtype=np.int32)
    # values span up to ~28k of 65535: clipping to 8 bits would saturate nearly everything at 255
    assert arr.max() < 140 and arr.min() < 5
    assert "16-bit" in out.transcoded_from or "I;16" in out.transcoded_from


def test_alpha_composited_over_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out = load_image(buf.getvalue(), "jpg", 16)
    assert np.asarray(Image.open(io.BytesIO(out.data))).min() > 240


def test_max_pixels_guard():
    data = jpeg_bytes(face_like(64))
    with pytest.raises(BadInput) as e:
        load_image(data, "jpg", 32, max_pixels=64 * 63)
    assert e.value.reason == "decompression_bomb"


def test_draft_decoding_result_matches_size():
    big = jpeg_bytes(face_like(512).resize((1024, 1024)))
    out = load_image(big, "jpg", 448)
    assert out.engine_image.size == (448, 448) and (out.width, out.height) == (1024, 1024)


def test_celeba_mask_union_excludes_missing_and_reports(tmp_path):
    d = tmp_path / "CelebAMask-HQ-mask-anno" / "0"
    d.mkdir(parents=True)
    a = np.zeros((512, 512), np.uint8)
    a[:100] = 255
    b = np.zeros((512, 512), np.uint8)
    b[-50:] = 255
    Image.fromarray(a).save(d / "00003_skin.png")
    Image.fromarray(b).save(d / "00003_hair.png")
    Image.fromarray(np.full((512, 512), 255, np.uint8)).save(d / "00003_eye_g.png")  # glasses: left out
    mask = np.asarray(
        Image.open(io.BytesIO(build_celeba_mask(tmp_path, "CelebAMask-HQ-mask-anno/0/00003", ("skin", "hair"))))
    )
    assert mask[:100].min() == 255 and mask[-50:].min() == 255 and mask[100:-50].max() == 0
    with pytest.raises(BadInput) as e:
        build_celeba_mask(tmp_path, "CelebAMask-HQ-mask-anno/0/00004", ("skin", "hair"))
    assert e.value.reason == "mask_missing"

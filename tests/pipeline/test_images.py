"""Safe image loading: every odd input is converted correctly, every bad one gets its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import BadInput, build_celeba_labels, check_mask, load_image
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


def test_celeba_label_map_keeps_every_class_and_reports_missing(tmp_path):
    from pipeline.sources import CELEBA_LABELS

    d = tmp_path / "CelebAMask-HQ-mask-anno" / "0"
    d.mkdir(parents=True)
    parts = {  # rows of the 512 px image each class covers; skin and hair overlap in rows 90-99
        "skin": slice(0, 100),
        "hair": slice(90, 120),
        "eye_g": slice(200, 210),
        "cloth": slice(500, 512),
    }
    for name, rows in parts.items():
        a = np.zeros((512, 512), np.uint8)
        a[rows] = 255
        Image.fromarray(a).save(d / f"00003_{name}.png")
    neck = np.zeros((256, 256), np.uint8)
    neck[200:] = 255
    Image.fromarray(neck).save(d / "00003_neck.png")  # a smaller file: resized to 512, rows 400-511
    data = build_celeba_labels(tmp_path, "CelebAMask-HQ-mask-anno/0/00003", CELEBA_LABELS)
    stored = Image.open(io.BytesIO(data))
    assert stored.format == "PNG" and stored.mode == "L" and stored.size == (512, 512)
    labels = np.asarray(stored)
    want = np.zeros((512, 512), np.uint8)  # background where no part is
    # painted in label order (later classes win), as CelebAMask-HQ's g_mask.py does
    for name, rows in (("skin", parts["skin"]), ("eye_g", parts["eye_g"]), ("hair", parts["hair"]),
                       ("neck", slice(400, 512)), ("cloth", parts["cloth"])):  # fmt: skip
        want[rows] = CELEBA_LABELS.index(name)
    assert np.array_equal(labels, want)  # lossless: every class index, exactly, not a 0/255 union
    assert labels[95, 0] == CELEBA_LABELS.index("hair") and labels[205, 0] == CELEBA_LABELS.index("eye_g")
    with pytest.raises(BadInput) as e:
        build_celeba_labels(tmp_path, "CelebAMask-HQ-mask-anno/0/00004", CELEBA_LABELS)
    assert e.value.reason == "mask_missing"
    (d / "00005_skin.png").write_bytes(b"not a png")
    with pytest.raises(BadInput) as e:
        build_celeba_labels(tmp_path, "CelebAMask-HQ-mask-anno/0/00005", CELEBA_LABELS)
    assert e.value.reason == "corrupt_mask"


def test_mask_files_are_kept_as_given(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:48, 20:44] = 255
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    assert check_mask(buf.getvalue()) == buf.getvalue()  # the official 3-channel PNG, byte for byte
    bmp = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(bmp, format="BMP")
    as_png = Image.open(io.BytesIO(check_mask(bmp.getvalue())))
    assert as_png.format == "PNG" and np.array_equal(np.asarray(as_png), rgb)  # re-encoded losslessly
    for bad in (b"", b"not an image", buf.getvalue()[:40]):
        with pytest.raises(BadInput) as e:
            check_mask(bad)
        assert e.value.reason == "corrupt_mask"

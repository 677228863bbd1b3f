"""Builders for the official AlphaFace layout (`dataset/ffhq_lpff/256_small` in the official repo):

    ROOT/img/NNNNNN.png    RGB face crops
    ROOT/mask/NNNNNN.png   3-channel, white on the inner face (skin, brows, eyes, nose, mouth, lips)
    ROOT/txt/NNNNNN.txt    the caption, one paragraph of plain text

The faces and their part masks come from demo.synthetic's CelebA-HQ layout; the stems are six
digits with gaps, as in the official folder. Real folders are untidy, so this one is too, in the
middle of the listing: a caption without its image, an image without its caption, an empty, a
blank and a non-UTF-8 caption file, a caption with a byte-order mark and Windows line ends, a
caption naming the person's gender, a mask without anything else, and a Jupyter checkpoint folder
inside img/ (the official folder has one).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from demo.synthetic import generate, mask_relpath

INNER_FACE = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
CAPTIONS = (
    "The person is looking downward. The background is blurred with indistinct blue tones.",
    "The face is turned to the left; soft light from the right. There are no significant occlusions on the face.",
    "Looking straight at the camera, wearing glasses, in front of a plain gray wall.",
    "The head is tilted up, a hand covers part of the chin, and the background is a striped pattern.",
)


@dataclass
class AlphafaceFolder:
    """What the builder wrote, so tests know what to expect."""

    root: Path
    captions: dict[str, str] = field(default_factory=dict)  # stem -> caption after validation
    failures: dict[str, str] = field(default_factory=dict)  # stem -> counted reason
    flagged: set[str] = field(default_factory=set)  # stems whose caption names who the person is
    masks: dict[str, bytes] = field(default_factory=dict)  # stem -> mask file bytes


def _inner_face_mask(synthetic: Path, idx: int, size: int) -> Image.Image:
    region = np.zeros((512, 512), dtype=bool)
    for name in INNER_FACE:
        path = synthetic / mask_relpath(idx, name)
        if path.is_file():
            region |= np.asarray(Image.open(path).convert("L")) > 127
    mask = Image.fromarray(region.astype(np.uint8) * 255, "L").resize((size, size), Image.NEAREST)
    return mask.convert("RGB")  # the official masks are 3-channel


def make_alphaface(root: Path, n: int = 9, size: int = 64, seed: int = 0) -> AlphafaceFolder:
    """`n` images (n >= 6) in the official layout under `root`, with the odd cases above."""
    synthetic = root.parent / f"{root.name}-synthetic"
    generate(synthetic, "celeba-hq", identities=3, per_identity=(n + 2) // 3, seed=seed, size=size)
    for sub in ("img", "mask", "txt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    out = AlphafaceFolder(root)
    stems = [f"{3 * i + 2:06d}" for i in range(n)]  # 000002, 000005, ...: gaps, as in the official folder
    for i, stem in enumerate(stems):
        Image.open(synthetic / "CelebA-HQ-img" / f"{i}.jpg").convert("RGB").save(root / "img" / f"{stem}.png")
        buf = root / "mask" / f"{stem}.png"
        _inner_face_mask(synthetic, i, size).save(buf)
        out.masks[stem] = buf.read_bytes()
        text = CAPTIONS[i % len(CAPTIONS)]
        (root / "txt" / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        out.captions[stem] = text
    odd = {  # in the middle of the listing, not at its end
        stems[1]: b"\xef\xbb\xbfThe person  faces the camera.\r\nEven light,\r\n plain background.\r\n",
        stems[2]: b"",
        stems[4]: "Caf\xe9 background, the person smiles.".encode("latin-1"),
        stems[5]: b"The woman looks to the right under bright light.",
    }
    for stem, data in odd.items():
        (root / "txt" / f"{stem}.txt").write_bytes(data)
    out.captions[stems[1]] = "The person faces the camera. Even light, plain background."
    out.captions[stems[5]] = "The woman looks to the right under bright light."
    out.flagged.add(stems[5])
    for stem, reason in ((stems[2], "caption_empty"), (stems[4], "caption_undecodable")):
        out.failures[stem] = reason
        del out.captions[stem]
    (root / "txt" / f"{stems[3]}.txt").unlink()  # an image without its caption
    out.failures[stems[3]] = "caption_missing"
    del out.captions[stems[3]]
    if n > 6:
        (root / "txt" / f"{stems[6]}.txt").write_text(" \n\t\n", encoding="utf-8")  # blank
        out.failures[stems[6]] = "caption_empty"
        del out.captions[stems[6]]
    orphan = f"{3 * 2 + 3:06d}"  # between stems[2] and stems[3]: a caption whose image is gone
    (root / "txt" / f"{orphan}.txt").write_text(CAPTIONS[0], encoding="utf-8")
    out.failures[orphan] = "image_missing"
    shutil.copy(root / "mask" / f"{stems[0]}.png", root / "mask" / f"{3 * 4 + 4:06d}.png")  # a mask alone
    checkpoints = root / "img" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(root / "img" / f"{stems[0]}.png", checkpoints / f"{stems[0]}-checkpoint.png")
    return out

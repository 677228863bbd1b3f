"""The world's faces: demo.synthetic's identities and looks, framed like an aligned face, with exact truth.

Each image is drawn at twice its size and box-downsampled (anti-aliased edges), then cropped to a fixed
box around the head (hair and ears, little else): the framing an aligned ArcFace crop gives, so the
recognisers and the trainer see the same whole image. Expressions are drawn with `synthetic.BOLD`, large
enough to read at 64 px. The label map (CelebAMask-HQ order, 19 = an occluder) comes from the same parts.

Captions are written from the look alone, in the paper's holistic style (pose, expression, accessories,
occlusions, background, lighting) and factorised per field. Identity traits (skin, hair, facial hair, eye
colour, face shape, jewellery, clothes) are never mentioned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from demo import synthetic as syn

HEAD_BOX = (0.18, 0.13, 0.82, 0.77)  # the crop in the full frame's unit coordinates
OCCLUDER = len(syn.MASK_CLASSES) + 1  # label of what hides the face (hand, mask, microphone)
SPLITS = ("train", "heldout")


def label_map(parts: list[syn.Part], size: int) -> np.ndarray:
    """(size, size) uint8: 0 background, i = CELEBA_LABELS[i], 19 an occluder; glasses painted over as eye_g."""
    index = {name: i + 1 for i, name in enumerate(syn.MASK_CLASSES)}
    labels = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(labels)
    glasses = Image.new("L", (size, size), 0)
    for part in parts:
        if part.overlay:
            syn._draw(ImageDraw.Draw(glasses), part, size, 255, 255)
            continue
        value = index[part.label] if part.label else OCCLUDER
        syn._draw(draw, part, size, value, value)
    arr = np.array(labels)
    arr[(np.asarray(glasses) > 0) & (arr != OCCLUDER)] = index["eye_g"]
    return arr


# ---------------------------------------------------------------------------------------------
# Captions


def pose_phrase(yaw: float, pitch: float) -> str:
    """yaw > 0 turns the face towards the image's right."""
    side, updown = ("right" if yaw > 0 else "left"), ("upward" if pitch > 0 else "downward")
    h = "straight ahead" if abs(yaw) < 10 else f"slightly to the {side}" if abs(yaw) < 30 else f"to the {side}"
    v = "" if abs(pitch) < 8 else f"slightly {updown}" if abs(pitch) < 17 else updown
    if not v:
        return f"looking {h}"
    return f"looking {v}" if h == "straight ahead" else f"looking {h} and {v}"


EXPRESSION = {
    "neutral": "with a neutral expression",
    "smile": "with a smile",
    "open_mouth": "with an open mouth, surprised",
    "frown": "with a frown",
}
LIGHTING = {
    "even": "The lighting is soft and even.",
    "left": "The lighting comes from the left.",
    "right": "The lighting comes from the right.",
    "top": "The lighting comes from above.",
    "dim": "The lighting is dim.",
    "bright": "The lighting is bright.",
}
OCCLUSION = {
    None: "There are no occlusions on the face.",
    "hand": "A hand partially covers the face.",
    "mask": "A mask covers the mouth and nose.",
    "microphone": "A microphone is in front of the chin.",
}
BACKGROUND = {
    "plain": "a plain {c} wall",
    "gradient": "a {c} gradient",
    "striped": "a striped {c} pattern",
    "checkered": "a checkered {c} pattern",
    "dotted": "a dotted {c} pattern",
}


def factorised(look: syn.Look) -> dict[str, str]:
    pattern, colour = look.background.split(" ", 1)
    items = [w for w, on in (("glasses", look.glasses), ("a hat", look.hat)) if on]
    return {
        "head_pose": f"The person is {pose_phrase(look.yaw, look.pitch)}.",
        "expression": f"The person is {EXPRESSION[look.expression].removeprefix('with ')}.",
        "accessories": f"They are wearing {' and '.join(items)}." if items else "They wear no glasses or hat.",
        "occlusions": OCCLUSION[look.occluder],
        "background": f"The background is {BACKGROUND[pattern].format(c=colour)}.",
        "lighting": LIGHTING[look.lighting],
    }


def caption(look: syn.Look) -> str:
    f = factorised(look)
    head = f"The person is {pose_phrase(look.yaw, look.pitch)}, {EXPRESSION[look.expression]}."
    return " ".join([head, f["accessories"], f["occlusions"], f["background"], f["lighting"]])


# ---------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class WorldSize:
    train_ids: int = 160
    train_per_id: int = 16
    heldout_ids: int = 32
    heldout_per_id: int = 10
    image_size: int = 64


def draw_one(ident: syn.Identity, look: syn.Look, rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, _ = HEAD_BOX
    frame = round(size * 2 / (x1 - x0))  # the full frame whose crop is `2 * size` px across
    parts = syn.face_parts(ident, look, rng, syn.BOLD)
    box = (round(x0 * frame), round(y0 * frame), round(x0 * frame) + 2 * size, round(y0 * frame) + 2 * size)
    img = syn.render_image(look, parts, frame, rng).crop(box).resize((size, size), Image.BOX)
    labels = Image.fromarray(label_map(parts, frame)).crop(box).resize((size, size), Image.NEAREST)
    return np.asarray(img), np.asarray(labels)


def generate(size: WorldSize, seed: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Every image of both splits, with its truth. Identities are seeded by (seed, id) and images by
    (seed, id, index), so a larger world keeps a smaller one's faces."""
    rows = []
    for split, n_ids, per in ((0, size.train_ids, size.train_per_id), (1, size.heldout_ids, size.heldout_per_id)):
        for i in range(n_ids):
            gid = i if split == 0 else 100_000 + i  # held-out identities never meet the training ones
            ident = syn.make_identity(random.Random(f"{seed}:identity:{gid}"), f"id{gid}")
            for j in range(per):
                rng = random.Random(f"{seed}:image:{gid}:{j}")
                rows.append((split, gid, ident, syn.make_look(rng), rng))
    s = size.image_size
    images, labels = np.zeros((len(rows), s, s, 3), np.uint8), np.zeros((len(rows), s, s), np.uint8)
    truth: dict[str, list] = {k: [] for k in ("split", "identity", "yaw", "pitch", "expression", "caption")}
    fields: dict[str, list[str]] = {}
    for k, (split, gid, ident, look, rng) in enumerate(tqdm(rows, desc="world: faces", disable=not progress)):
        images[k], labels[k] = draw_one(ident, look, rng, s)
        truth["split"].append(split)
        truth["identity"].append(gid)
        truth["yaw"].append(look.yaw)
        truth["pitch"].append(look.pitch)
        truth["expression"].append(syn.EXPRESSIONS.index(look.expression))
        truth["caption"].append(caption(look))
        for name, phrase in factorised(look).items():
            fields.setdefault(name, []).append(phrase)
    return {
        "images": images,
        "labels": labels,
        "split": np.asarray(truth["split"], np.int64),
        "identity": np.asarray(truth["identity"], np.int64),
        "yaw": np.asarray(truth["yaw"], np.float32),
        "pitch": np.asarray(truth["pitch"], np.float32),
        "expression": np.asarray(truth["expression"], np.int64),
        "caption": np.asarray(truth["caption"]),
        **{f"attr_{name}": np.asarray(v) for name, v in fields.items()},
    }


def face_hair(labels: np.ndarray) -> np.ndarray:
    """(N, S, S) bool: what a swap may repaint (training.batch's face_hair region), occluders excluded."""
    from training.batch import CELEBA_LABELS, MASK_REGIONS

    region = [CELEBA_LABELS.index(c) for c in MASK_REGIONS["face_hair"]]
    return np.isin(labels, region)


def write_alphaface(world: dict[str, np.ndarray], root: Path) -> int:
    """The training split in the official AlphaFace layout (img/N.png, mask/N.png white where the swap may
    repaint, txt/N.txt the caption), which `pipeline.caption --source alphaface --engine existing` reads."""
    from pipeline.dataset import atomic_open, atomic_write_bytes

    def png(path: Path, array: np.ndarray) -> None:
        with atomic_open(path) as f:
            Image.fromarray(array).save(f, format="PNG")

    rows = np.where(world["split"] == 0)[0]
    masks = face_hair(world["labels"][rows])
    for sub in ("img", "mask", "txt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        png(root / "img" / f"{n}.png", world["images"][row])
        png(root / "mask" / f"{n}.png", mask.astype(np.uint8) * 255)
        atomic_write_bytes(root / "txt" / f"{n}.txt", (str(world["caption"][row]) + "\n").encode())
    return len(rows)

"""Source readers: one record per input image, listed in a sorted, deterministic order.

- `vggface2-hq`: ROOT/<identity>/<file>
- `celeba-hq`:   ROOT/CelebA-HQ-img/N.jpg, with optional CelebA identities, eval split and
                 CelebAMask-HQ masks
- `alphaface`:   the official AlphaFace layout (`dataset/ffhq_lpff/256_small`): ROOT/img/N.png,
                 ROOT/mask/N.png (white on the inner face) and ROOT/txt/N.txt (its caption)
- `folder`:      any image tree; the identity is the parent folder, and `<stem>.txt` beside an image
                 is its caption
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.dataset import make_key, unique_keys

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

# CelebAMask-HQ classes in label-map order (the face-parsing convention, and CelebAMask-HQ's own
# g_mask.py): a stored label-map pixel i means CELEBA_LABELS[i]; where parts overlap, the later wins.
# training.batch takes its mask regions from this tuple (pipeline never imports training).
CELEBA_LABELS = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
# What a `.mask.png` member holds, recorded per shard in stats (`mask_format`):
MASK_REGION = "region"  # 0/255 (any channels): white is the region the swap may repaint; older datasets
MASK_CELEBA_LABELS = "celeba-labels"  # one channel, pixel = CELEBA_LABELS index; training picks the region
MASK_FORMATS = {"celeba-hq": MASK_CELEBA_LABELS, "alphaface": MASK_REGION}  # sources with masks
CAPTIONED_SOURCES = ("alphaface", "folder")  # sources whose records can carry their own caption file
# The ground-truth file of the built-in synthetic faces (demo/synthetic.py): its presence in an input root
# marks the data as synthetic, so cards say so instead of describing real people.
SYNTHETIC_MARKER = "synthetic_attributes.jsonl"
CELEBA_SPLITS = {"train": "0", "val": "1", "test": "2"}


@dataclass(frozen=True)
class SourceRecord:
    key: str
    dataset: str
    identity: str | None
    source_path: str  # relative to the input root, with '/' separators
    mask_path: str | None = None  # CelebAMask-HQ: `CelebAMask-HQ-mask-anno/<k>/<idx:05d>` (a prefix); alphaface: a file
    caption_path: str | None = None  # the source's own caption (`--engine existing` reads it)

    def to_row(self) -> list[str | None]:
        return [self.key, self.identity, self.source_path, self.mask_path, self.caption_path]

    @classmethod
    def from_row(cls, dataset: str, row: list[str | None]) -> SourceRecord:
        # plans written before caption paths have 4 columns
        key, identity, source_path, mask_path, caption_path = [*row, None][:5]
        return cls(str(key), dataset, identity, str(source_path), mask_path, caption_path)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _with_keys(dataset: str, items: list[tuple[str | None, str, str | None]]) -> list[SourceRecord]:
    """items: (identity, relative path, mask prefix), already sorted."""
    keys = unique_keys([make_key(dataset, ident, Path(rel).stem) for ident, rel, _ in items])
    return [SourceRecord(k, dataset, ident, rel, mask) for k, (ident, rel, mask) in zip(keys, items)]


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"input directory {root} does not exist or is not a directory")


def list_vggface2_hq(root: Path, dataset: str = "vggface2-hq", **_: object) -> list[SourceRecord]:
    _require_dir(root)
    items: list[tuple[str | None, str, str | None]] = []
    for ident in sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")):
        for name in sorted(n for n in os.listdir(root / ident) if _is_image(n)):
            items.append((ident, f"{ident}/{name}", None))
    if not items:
        raise FileNotFoundError(f"{root} holds no <identity>/<image> files: is it VGGFace2-HQ?")
    return _with_keys(dataset, items)


def _find(root: Path, name: str, extra: Path | None) -> Path | None:
    """Look for a CelebA metadata file at ROOT, ROOT/Anno or ROOT/Eval, unless given explicitly."""
    if extra is not None:
        if not extra.is_file():
            raise FileNotFoundError(f"{extra} does not exist")
        return extra
    for candidate in (root / name, root / "Anno" / name, root / "Eval" / name):
        if candidate.is_file():
            return candidate
    return None


def _read_pairs(path: Path, skip_header: bool = False) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.split()
            if not parts or (skip_header and i == 0 and not parts[0].isdigit()):
                continue
            rows.append(parts)
    return rows


def list_celeba_hq(
    root: Path,
    dataset: str = "celeba-hq",
    split: str | None = None,
    identity_file: Path | None = None,
    partition_file: Path | None = None,
    **_: object,
) -> list[SourceRecord]:
    _require_dir(root)
    img_dir = root / "CelebA-HQ-img"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} does not exist: CelebA-HQ images live in ROOT/CelebA-HQ-img/N.jpg")
    files = [n for n in os.listdir(img_dir) if _is_image(n)]
    # Numeric order (0, 1, 2, ... 10), not string order: N is the CelebA-HQ index.
    files.sort(key=lambda n: (0, int(Path(n).stem), n) if Path(n).stem.isdigit() else (1, 0, n))

    mapping_path = root / "CelebA-HQ-to-CelebA-mapping.txt"
    orig_of: dict[str, str] = {}
    if mapping_path.is_file():
        orig_of = {row[0]: row[2] for row in _read_pairs(mapping_path, skip_header=True) if len(row) >= 3}

    identity_of: dict[str, str] = {}
    id_path = _find(root, "identity_CelebA.txt", identity_file)
    if id_path is not None:
        if not orig_of:
            raise FileNotFoundError(f"{id_path} needs {mapping_path} to map CelebA-HQ indices to CelebA files")
        identity_of = {row[0]: row[1] for row in _read_pairs(id_path) if len(row) >= 2}

    partition_of: dict[str, str] = {}
    if split is not None:
        if split not in CELEBA_SPLITS:
            raise ValueError(f"--split must be one of {sorted(CELEBA_SPLITS)}, not {split!r}")
        part_path = _find(root, "list_eval_partition.txt", partition_file)
        if part_path is None or not orig_of:
            raise FileNotFoundError(
                "--split needs list_eval_partition.txt (ROOT, ROOT/Eval or --partition-file) and "
                "CelebA-HQ-to-CelebA-mapping.txt in ROOT"
            )
        partition_of = {row[0]: row[1] for row in _read_pairs(part_path) if len(row) >= 2}

    mask_root = root / "CelebAMask-HQ-mask-anno"
    items: list[tuple[str | None, str, str | None]] = []
    for name in files:
        stem = Path(name).stem
        orig = orig_of.get(stem)
        if split is not None and (orig is None or partition_of.get(orig) != CELEBA_SPLITS[split]):
            continue
        identity = identity_of.get(orig) if orig is not None else None
        mask = None
        if mask_root.is_dir() and stem.isdigit():
            idx = int(stem)
            mask = f"CelebAMask-HQ-mask-anno/{idx // 2000}/{idx:05d}"
        items.append((identity, f"CelebA-HQ-img/{name}", mask))
    if not items:
        raise FileNotFoundError(f"no CelebA-HQ images selected under {img_dir} (split={split})")
    return _with_keys(dataset, items)


def _index_order(name: str) -> tuple[int, int, str]:
    """Numeric stems in numeric order (2, 10, 100), then any others by name."""
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _files(folder: Path, keep: Callable[[str], bool]) -> dict[str, str]:
    """stem -> file name of the plain files directly in `folder` (not hidden: `.ipynb_checkpoints/`)."""
    if not folder.is_dir():
        return {}
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".") and keep(e.name))
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(Path(name).stem, name)  # a stem seen twice (a.png, a.jpg): the first by name
    return out


def list_alphaface(root: Path, dataset: str = "alphaface", **_: object) -> list[SourceRecord]:
    """The official layout. A caption whose image is missing stays in the listing, at the image path
    the layout expects, so the caption stage counts and records it (`image_missing`) with the rest."""
    _require_dir(root)
    if not (root / "img").is_dir():
        raise FileNotFoundError(f"{root / 'img'} does not exist: the AlphaFace layout is ROOT/{{img,mask,txt}}/N.*")
    images = _files(root / "img", _is_image)
    masks = _files(root / "mask", _is_image)
    captions = _files(root / "txt", lambda n: n.lower().endswith(".txt"))
    items: list[tuple[str | None, str, str | None, str | None]] = []
    for stem in sorted(images.keys() | captions.keys(), key=_index_order):
        image = f"img/{images[stem]}" if stem in images else f"img/{stem}.png"
        mask = f"mask/{masks[stem]}" if stem in masks else None
        caption = f"txt/{captions[stem]}" if stem in captions else None
        items.append((None, image, mask, caption))
    if not items:
        raise FileNotFoundError(f"{root} holds no img/ images or txt/ captions: is it the AlphaFace layout?")
    keys = unique_keys([make_key(dataset, None, Path(rel).stem) for _, rel, _, _ in items])
    return [SourceRecord(k, dataset, None, rel, mask, cap) for k, (_, rel, mask, cap) in zip(keys, items)]


def list_folder(root: Path, dataset: str = "folder", **_: object) -> list[SourceRecord]:
    _require_dir(root)
    items: list[tuple[str | None, str, str | None]] = []
    captions: dict[str, str] = {}  # image path -> `<stem>.txt` beside it
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        identity = rel_dir.name if rel_dir.parts else None
        texts = {Path(n).stem: n for n in filenames if n.lower().endswith(".txt") and not n.startswith(".")}
        for name in sorted(n for n in filenames if _is_image(n)):
            rel = (rel_dir / name).as_posix()
            items.append((identity, rel, None))
            if Path(name).stem in texts:
                captions[rel] = (rel_dir / texts[Path(name).stem]).as_posix()
    items.sort(key=lambda it: it[1])
    if not items:
        raise FileNotFoundError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [dataclasses.replace(r, caption_path=captions.get(r.source_path)) for r in _with_keys(dataset, items)]


SOURCES: dict[str, Callable[..., list[SourceRecord]]] = {
    "vggface2-hq": list_vggface2_hq,
    "celeba-hq": list_celeba_hq,
    "alphaface": list_alphaface,
    "folder": list_folder,
}


def list_source(source: str, root: Path, **options: object) -> list[SourceRecord]:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[source](Path(root), **options)

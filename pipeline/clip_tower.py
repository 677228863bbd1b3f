"""The CLIP tower of the embed stage and the trainer: loading, QuickGELU, tokenizer, trimmed text batches.

`load_clip(model, pretrained)` builds the model exactly as open_clip does: a hub name or a model-config
JSON, a pretrained tag, a checkpoint path, or "none" (seeded random weights, so every rank and rerun
gets the same ones). Tags that open_clip marks as QuickGELU-trained get QuickGELU. The trainer builds
its CLIP image tower with the same function, so its image embeddings match the cached ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class ClipWeightsUnavailable(RuntimeError):
    """A pretrained tag whose weights are neither cached nor downloadable here."""


@dataclass
class Clip:
    """An open_clip model with its own tokenizer and eval preprocessing, ready to encode."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]  # PIL -> (3, S, S) normalised
    name: str  # registered open_clip model name (a config JSON's file stem)
    pretrained: str  # as given: tag, checkpoint path, or "none"
    precision: str
    device: torch.device
    input_dtype: torch.dtype
    context_length: int
    embed_dim: int
    quick_gelu: bool

    def token_count(self, text: str) -> int:
        """Tokens the caption needs, start and end included; above `context_length` it is truncated."""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(self.tokenizer, SimpleTokenizer):
            return len(self.tokenizer.encode(text)) + 2  # + <start_of_text>, <end_of_text>
        hf = getattr(self.tokenizer, "tokenizer", None)  # HFTokenizer / SigLipTokenizer wrap a HF tokenizer
        if hf is None:
            raise TypeError(f"cannot count tokens with {type(self.tokenizer).__name__}")
        clean = getattr(self.tokenizer, "clean_fn", lambda t: t)
        return len(hf(clean(text))["input_ids"])

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N,) texts -> (N, D) float32, L2-normalised, on the CPU.

        Where no position can see the padding (see `_trimmable`), the batch runs at its longest
        text's token length instead of the full padded context: the cost scales with it, and short
        texts (attribute phrases) cost a fraction. In float32 the result equals the full context's
        up to float rounding; in fp16/bf16, within that precision's rounding.
        """
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)  # (N, context_length)
            if not _trimmable(self.model, self.tokenizer):
                return _normalise(self.model.encode_text(tokens))
            return _normalise(_encode_trimmed(self.model, trim_padding(tokens)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed -> (N, D) float32, L2-normalised, on the CPU."""
        with torch.inference_mode():
            return _normalise(self.model.encode_image(pixels.to(self.device, self.input_dtype)))

    def encode_pixels(self, pixels: torch.Tensor, prep: ImagePrep) -> torch.Tensor:
        """`prep.host`'s stacked output (uint8 (N, S, S, 3), or float (N, 3, S, S) where open_clip's transform
        cannot be split) -> (N, D) float32, L2-normalised, left on the model's device: no host sync, so the
        caller can queue the next batch while this one runs, and copy all of them back at once."""
        with torch.inference_mode():
            x = prep.normalise(pixels.to(self.device, non_blocking=True))  # (N, 3, S, S) float32
            return F.normalize(self.model.encode_image(x.to(self.input_dtype)).float(), dim=-1)

    def image_prep(self) -> ImagePrep:
        return image_prep(self.preprocess, self.model)


@dataclass(frozen=True)
class ImagePrep:
    """open_clip's eval preprocessing, cut where the pixels are still uint8.

    The geometric part (resize, crop, RGB) runs on the host, in the decode threads; the float conversion
    and normalisation run on the model's device, batched. Those two are elementwise float32 operations done
    in the same order as open_clip's ToTensor + Normalize (x / 255, - mean, / std), so the result is bit for
    bit the same, at a quarter of the bytes to move and none of the host's float work (about 1.5 ms of a
    5 ms image on one core here). A transform that does not end in ToTensor + Normalize is kept whole on
    the host (`geometry` None).
    """

    geometry: Callable[[Any], Any] | None  # PIL image (or (3, H, W) uint8 tensor) -> the same type at (S, S)
    whole: Callable[[Image.Image], torch.Tensor]  # open_clip's own transform: PIL -> (3, S, S) normalised
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int  # the model input's largest side: decoding need not go below it

    def host(self, img: Image.Image) -> torch.Tensor:
        """PIL -> (S, S, 3) uint8, or (3, S, S) float32 normalised where the transform is kept whole."""
        if self.geometry is None:
            return self.whole(img)
        out = self.geometry(img)  # RGB, (S, S)
        w, h = out.size
        # tobytes + frombuffer: one copy, 3x faster than np.array; bytearray keeps the tensor writable
        return torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).view(h, w, 3)  # (S, S, 3)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, 3, S, S) float32, exactly ToTensor + Normalize; float input passes through."""
        if pixels.dtype != torch.uint8:
            return pixels
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        x = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # (N, 3, S, S)
        return x.div_(255).sub_(mean).div_(std)


def image_prep(preprocess: Callable[[Image.Image], torch.Tensor], model: torch.nn.Module) -> ImagePrep:
    """Split open_clip's eval transform (a Compose ending in ToTensor + Normalize) into an ImagePrep."""
    import open_clip
    from open_clip.transform import MaybeToTensor
    from torchvision import transforms as T

    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    input_size = max(size) if isinstance(size, tuple | list) else int(size)
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) >= 2 and isinstance(steps[-1], T.Normalize) and type(steps[-2]) in (T.ToTensor, MaybeToTensor):
        norm = steps[-1]
        return ImagePrep(T.Compose(steps[:-2]), preprocess, tuple(norm.mean), tuple(norm.std), input_size)
    return ImagePrep(None, preprocess, (), (), input_size)


def _trimmable(model: torch.nn.Module, tokenizer: Any) -> bool:
    """Whether padding positions can be dropped without changing any embedding: open_clip's CLIP text
    tower with a causal mask (no position sees a later one, so none sees the padding) that pools
    at the end-of-text or first token (never at the last, padded position), and open_clip's own
    tokenizer, whose end-of-text id is the largest (so argmax finds it)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    return (
        type(model) is CLIP  # subclasses may pool or mask differently
        and isinstance(tokenizer, SimpleTokenizer)
        and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
        and isinstance(getattr(model, "positional_embedding", None), torch.Tensor)
        and getattr(model, "text_pool_type", None) in ("argmax", "eos", "first")
    )


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """(N, context) open_clip tokens -> (N, L): through the batch's last end-of-text token (the largest
    id: where open_clip pools). Not a count of non-zero ids, as 0 is also a real token ("!")."""
    return tokens[:, : int(tokens.argmax(dim=1).max()) + 1]


class _TextForward(torch.nn.Module):
    """`clip.encode_text` as a module's forward, so that functional_call can run it (unnormalised: the
    caller normalises in float32, as for untrimmed batches)."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def _encode_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own `encode_text` on (N, L) tokens, L <= context: the model's positional embedding
    and causal mask are given for the first L positions only (a functional call: the model itself is
    not changed). Returns (N, D) unnormalised, in the model's dtype."""
    n = tokens.shape[1]
    state = {"clip.positional_embedding": model.positional_embedding[:n]}
    if model.attn_mask is not None:
        state["clip.attn_mask"] = model.attn_mask[:n, :n]
    return torch.func.functional_call(_TextForward(model), state, (tokens,), strict=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


def register_model_config(path: str | os.PathLike) -> str:
    """Register an open_clip model-config JSON; returns its model name (the file stem)."""
    import open_clip

    path = Path(path)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def load_clip(model: str, pretrained: str, device: str = "cpu", precision: str = "fp32") -> Clip:
    """Build the model exactly as open_clip does, with its tokenizer and eval preprocessing.

    `pretrained="none"` gives random weights, seeded, so reruns embed identically. A tag whose
    weights open_clip marks as QuickGELU-trained (such as `openai`) gets QuickGELU, as the weights need.
    """
    import open_clip

    name = register_model_config(model) if model.endswith(".json") else model
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; pass a name from open_clip.list_models() or a config JSON")
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained != "none" else {}
    if pretrained != "none" and not tag_cfg and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"--pretrained {pretrained!r} is neither an open_clip tag for {name} ({', '.join(tags) or 'none'}), "
            "a checkpoint file, nor 'none'"
        )
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-weight models are reproducible across reruns and ranks
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=None if pretrained == "none" else pretrained,
                precision=precision,
                device=device,
                force_quick_gelu=quick_gelu,
                pretrained_text=pretrained != "none",  # "none" means no weights at all, HF text towers too
                weights_only=True,
            )
    except RuntimeError as e:
        if not tag_cfg or "Failed to download" not in str(e):
            raise
        hub = tag_cfg.get("hf_hub") or tag_cfg.get("url", "")
        raise ClipWeightsUnavailable(
            f"the weights for --clip-model {name} --pretrained {pretrained} ({hub}) are not in the local cache "
            "and cannot be downloaded here (HF_HUB_OFFLINE=1 or no network). Fetch them once on a machine with "
            f"network access: HF_HUB_OFFLINE=0 python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{pretrained}')\" and copy ~/.cache/huggingface/hub here (or set HF_HOME), or download "
            f"the checkpoint file and pass its path as --pretrained. Cause: {e}"
        ) from e
    clip_model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return Clip(
        model=clip_model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        name=name,
        pretrained=pretrained,
        precision=precision,
        device=torch.device(device),
        input_dtype=open_clip.get_input_dtype(precision) or torch.float32,
        context_length=int(getattr(tokenizer, "context_length", None) or clip_model.context_length),
        embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
        quick_gelu=quick_gelu,
    )


@dataclass
class TextTable:
    """The distinct texts of a shard, each tokenized and encoded once."""

    row: dict[str, int]  # text -> row of `emb`, in first-seen order
    emb: np.ndarray  # (U, D) float32, L2-normalised
    tokens: list[int]  # tokens each text needs, start and end included
    context_length: int

    def lookup(self, texts: list[str]) -> np.ndarray:
        return self.emb[np.asarray([self.row[t] for t in texts], dtype=np.int64)]  # (N, D)

    def truncated(self, text: str) -> bool:
        return self.tokens[self.row[text]] > self.context_length


def encode_texts(clip: Clip, texts: Iterable[str], batch_size: int) -> TextTable:
    """Deduplicate, then encode in batches of `batch_size`, grouped by token count so that each
    batch runs at about its own texts' length (Clip.encode_text drops the common padding)."""
    row: dict[str, int] = {}
    for t in texts:
        row.setdefault(t, len(row))
    unique = list(row)
    counts = [clip.token_count(t) for t in unique]
    by_length = sorted(range(len(unique)), key=counts.__getitem__)
    emb = np.zeros((len(unique), clip.embed_dim), dtype=np.float32)  # (U, D)
    for i in range(0, len(unique), batch_size):
        rows = by_length[i : i + batch_size]
        emb[rows] = clip.encode_text([unique[j] for j in rows]).numpy()
    return TextTable(row, emb, counts, clip.context_length)

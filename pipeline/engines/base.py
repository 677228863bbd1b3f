"""The one small interface both caption engines implement.

The caption stage owns decoding, resizing, validation and writing; an engine only turns a batch of
already-decoded RGB images plus one prompt into texts. A bad image never reaches an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """A versioned caption instruction."""

    prompt_id: str  # e.g. "holistic-v1"; recorded in every sample and in the data card
    text: str  # the instruction, placed before the image so prefix caching can share it
    json_schema: dict[str, Any] | None = None  # structured mode: the answer must match this schema


@dataclass(frozen=True)
class Generation:
    """One engine answer."""

    text: str
    finish_reason: str  # "stop" (the model ended it) or "length" (cut by max_new_tokens)


@dataclass(frozen=True)
class EngineInfo:
    """What the stats and the data card record about the engine."""

    engine: str  # "vllm" | "transformers"
    engine_version: str
    model: str  # hub name or local path as given
    image_size: int  # side the images were pre-resized to
    max_dynamic_patch: int  # InternVL tiles per image (1 = a single 448 tile, 256 tokens)
    max_new_tokens: int
    decoding: str  # e.g. "greedy"


class CaptionEngine(Protocol):
    info: EngineInfo

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        """Caption a batch: one Generation per image, in order. Decoding is greedy."""
        ...

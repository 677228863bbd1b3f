"""Versioned caption prompts, structured-answer validation, and caption flags (docs/design.md §6).

Captions describe the target's attributes (pose, gaze, expression, lighting, background,
accessories, facial hair, hair, occlusions) and never who the person is: identity words fight the
identity transfer in training, so they are flagged.
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Any

from pipeline.engines.base import Prompt

HOLISTIC_TEXT = (
    "Describe the face in this image for a face-editing dataset. In under 60 words, state the head "
    "pose (yaw and pitch, e.g. turned left, looking downward), the gaze direction, the facial "
    "expression, the lighting, the background, any accessories (glasses, hat, earrings), facial hair, "
    "the hair, and any occlusions covering the face (hands, objects, masks), or that there are none. "
    "Do not mention identity: no names, gender, ethnicity or age. Refer to the subject as 'the person'. "
    "Answer in plain sentences."
)

ATTRIBUTES = (
    "head_pose",
    "gaze",
    "expression",
    "lighting",
    "background",
    "accessories",
    "facial_hair",
    "hair",
    "occlusions",
)

STRUCTURED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": "string", "maxLength": 160} for name in ATTRIBUTES},
    "required": list(ATTRIBUTES),
    "additionalProperties": False,
}

STRUCTURED_TEXT = (
    "Describe the face in this image for a face-editing dataset. Answer with one JSON object with "
    "exactly these string fields: head_pose (yaw and pitch), gaze, expression, lighting, background, "
    "accessories (or 'none'), facial_hair (or 'none'), hair, occlusions (what covers the face, or "
    "'none'). Keep each field short. Do not mention identity: no names, gender, ethnicity or age."
)

# The paper's own prompt, verbatim (arXiv 2601.16429). It does not forbid identity words, so its
# captions get flagged more often; 70 words can run past CLIP's 77 tokens (embed flags those).
PAPER_TEXT = (
    "Describe pose, background, facial accessories, and all obstacles covering the face area in the given "
    "face image. Only 70 words are allowed."
)

PROMPTS: dict[str, Prompt] = {
    "holistic": Prompt("holistic-v1", HOLISTIC_TEXT),
    "structured": Prompt("structured-v1", STRUCTURED_TEXT, STRUCTURED_SCHEMA),
    "paper": Prompt("paper-v1", PAPER_TEXT),
}
# The word limit each free-text prompt asks for (drawn on the card's caption-length plot).
WORD_LIMITS = {"holistic-v1": 60, "paper-v1": 70}

# `--engine existing`: no prompt runs; each caption is the source's own file, recorded under this id.
SOURCE_PROMPT = Prompt("source", "")

# Sentence templates composing a caption from structured fields; read like AlphaFace's captions.
_TEMPLATES = {
    "head_pose": "Head pose: {}.",
    "gaze": "Gaze: {}.",
    "expression": "Expression: {}.",
    "lighting": "Lighting: {}.",
    "background": "Background: {}.",
    "accessories": "Accessories: {}.",
    "facial_hair": "Facial hair: {}.",
    "hair": "Hair: {}.",
    "occlusions": "Occlusions: {}.",
}

# Words that describe who the person is rather than how the image looks.
IDENTITY_WORDS = frozenset(
    [
        "man",
        "men",
        "woman",
        "women",
        "male",
        "female",
        "boy",
        "boys",
        "girl",
        "girls",
        "guy",
        "gentleman",
        "lady",
        "ladies",
        "he",
        "she",
        "him",
        "his",
        "her",
        "hers",
        "himself",
        "herself",
        "masculine",
        "feminine",
        "asian",
        "caucasian",
        "african",
        "hispanic",
        "latino",
        "latina",
        "arab",
        "arabic",
        "indian",
        "ethnicity",
        "ethnic",
        "race",
        "young",
        "younger",
        "old",
        "older",
        "elderly",
        "aged",
        "teen",
        "teenager",
        "teenage",
        "child",
        "kid",
        "adult",
        "middle-aged",
        "senior",
        "baby",
        "toddler",
        "infant",
        "actor",
        "actress",
        "celebrity",
        "singer",
        "politician",
        "famous",
        "named",
    ]
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_AGE = re.compile(r"\b\d{1,3}[- ]?(year|yr)s?[- ]old\b|\b(in (his|her|their) )?\d0s\b", re.I)


class MalformedAnswer(ValueError):
    """A structured answer that is not a JSON object matching the schema."""


def get_prompt(name: str) -> Prompt:
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt {name!r}; choose one of {sorted(PROMPTS)}")
    return PROMPTS[name]


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text)
    return text


def parse_structured(text: str) -> dict[str, str]:
    """Parse and validate a structured answer against STRUCTURED_SCHEMA."""
    try:
        obj = json.loads(_strip_fences(text))
    except json.JSONDecodeError as e:
        raise MalformedAnswer(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedAnswer("not a JSON object")
    missing = [a for a in ATTRIBUTES if a not in obj]
    extra = sorted(set(obj) - set(ATTRIBUTES))
    if missing or extra:
        raise MalformedAnswer(f"missing fields {missing}, unexpected fields {extra}")
    bad = [a for a in ATTRIBUTES if not isinstance(obj[a], str) or not obj[a].strip()]
    if bad:
        raise MalformedAnswer(f"fields must be non-empty strings: {bad}")
    return {a: " ".join(obj[a].split()) for a in ATTRIBUTES}


def compose_caption(attributes: dict[str, str]) -> str:
    return " ".join(_TEMPLATES[a].format(attributes[a].rstrip(". ")) for a in ATTRIBUTES)


def clean_caption(text: str) -> str:
    """Collapse whitespace; the caption text is stored as the model wrote it otherwise."""
    return " ".join(text.split())


def identity_words(text: str) -> list[str]:
    """Identity words found in a caption, sorted and unique."""
    found = {w.lower() for w in _WORD.findall(text) if w.lower() in IDENTITY_WORDS}
    found.update(m.group(0).lower() for m in _AGE.finditer(text))
    return sorted(found)


def caption_flags(caption: str, finish_reason: str) -> list[str]:
    flags = []
    if finish_reason == "length":
        flags.append("truncated")
    if identity_words(caption):
        flags.append("identity_words")
    if not caption.strip():
        flags.append("empty")
    return flags


def word_stats(counts: list[int]) -> dict[str, Any]:
    """Caption-length figures (in words) for the stats and the data card, one quantile rule for both."""
    if not counts:
        return {"count": 0}
    q = sorted(counts)
    return {
        "count": len(q),
        "mean": round(statistics.fmean(q), 3),
        "min": q[0],
        "max": q[-1],
        "p50": q[len(q) // 2],
        "p95": q[min(len(q) - 1, int(0.95 * len(q)))],
    }

"""Prompt versions, structured-answer validation and caption flags."""

from __future__ import annotations

import json

import pytest

from pipeline.prompts import (
    ATTRIBUTES,
    PROMPTS,
    STRUCTURED_SCHEMA,
    MalformedAnswer,
    caption_flags,
    compose_caption,
    identity_words,
    parse_structured,
)


def _answer(**over):
    obj = {a: f"{a} value" for a in ATTRIBUTES}
    obj.update(over)
    return json.dumps(obj)


def test_prompts_versioned_and_schema_matches_attributes():
    assert {p.prompt_id for p in PROMPTS.values()} == {"holistic-v1", "structured-v1", "paper-v1"}
    assert PROMPTS["structured"].json_schema is STRUCTURED_SCHEMA
    assert STRUCTURED_SCHEMA["required"] == list(ATTRIBUTES)
    assert PROMPTS["holistic"].json_schema is None


def test_parse_structured_accepts_valid_and_fenced():
    attrs = parse_structured(_answer(gaze="  looking   down "))
    assert attrs["gaze"] == "looking down"
    assert parse_structured("```json\n" + _answer() + "\n```")["hair"] == "hair value"


@pytest.mark.parametrize(
    "text",
    [
        "The person looks left.",  # not JSON
        "[1, 2]",  # not an object
        json.dumps({"gaze": "down"}),  # missing fields
        _answer(extra="x"),  # unexpected field
        _answer(hair=3),  # wrong type
        _answer(hair="   "),  # empty
    ],
)
def test_parse_structured_rejects(text):
    with pytest.raises(MalformedAnswer):
        parse_structured(text)


def test_compose_caption_reads_every_field_in_order():
    cap = compose_caption({a: f"v{i}" for i, a in enumerate(ATTRIBUTES)})
    assert cap.startswith("Head pose: v0. Gaze: v1.")
    assert cap.endswith("Occlusions: v8.")


def test_identity_words_flagged():
    assert identity_words("A young woman with glasses, 30 years old.") == ["30 years old", "old", "woman", "young"]
    assert identity_words("The person looks down; the background is white.") == []
    assert caption_flags("He smiles.", "stop") == ["identity_words"]
    assert caption_flags("The person smiles", "length") == ["truncated"]
    assert caption_flags("", "stop") == ["empty"]


def test_paper_prompt_is_the_papers_text_verbatim():
    paper = PROMPTS["paper"]
    assert paper.text == (
        "Describe pose, background, facial accessories, and all obstacles covering the face area in the given "
        "face image. Only 70 words are allowed."
    )
    assert paper.prompt_id == "paper-v1" and paper.json_schema is None

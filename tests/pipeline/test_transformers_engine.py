"""The transformers caption engine on the tiny InternVL3: batching, greedy determinism, finish reasons."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from pipeline.engines.base import EngineInfo, Generation, Prompt
from pipeline.engines.transformers_engine import TransformersEngine

PROMPT = Prompt("test-v1", "Describe the head pose, expression and lighting of this face.")


def _images() -> list[Image.Image]:
    # different sizes and aspect ratios, so that tiled batches need padding
    sizes = [(448, 448), (896, 448), (448, 1344), (640, 480), (300, 300)]
    return [Image.effect_noise(size, 30 + 15 * i).convert("RGB") for i, size in enumerate(sizes)]


@pytest.fixture(scope="module")
def engine(tiny_internvl) -> TransformersEngine:
    return TransformersEngine(str(tiny_internvl), max_new_tokens=8)


def test_info(engine, tiny_internvl):
    assert engine.info == EngineInfo(
        engine="transformers",
        engine_version=transformers.__version__,
        model=str(tiny_internvl),
        image_size=448,
        max_dynamic_patch=1,
        max_new_tokens=8,
        decoding="greedy",
    )


def test_one_generation_per_image_in_order(engine):
    images = _images()
    gens = engine.generate(images, PROMPT)
    assert len(gens) == len(images)
    assert all(isinstance(g, Generation) and isinstance(g.text, str) for g in gens)
    assert all(g.finish_reason in ("stop", "length") for g in gens)
    assert len({g.text for g in gens}) > 1  # answers depend on the image
    assert engine.generate([], PROMPT) == []


def test_prompt_comes_before_the_image(engine):
    text = engine.chat_prompt(PROMPT)
    assert text.count("<IMG_CONTEXT>") == 1
    assert text.index(PROMPT.text) < text.index("<IMG_CONTEXT>")
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("max_dynamic_patch", [1, 4])
def test_batch_composition_does_not_change_answers(tiny_internvl, engine, max_dynamic_patch):
    if max_dynamic_patch != 1:
        engine = TransformersEngine(str(tiny_internvl), max_new_tokens=8, max_dynamic_patch=max_dynamic_patch)
    images = _images()
    batch = engine.generate(images, PROMPT)
    assert engine.generate(images[::-1], PROMPT)[::-1] == batch
    assert [engine.generate([im], PROMPT)[0] for im in images] == batch
    assert engine.generate(images[1:3], PROMPT) == batch[1:3]


def test_tiling_pads_the_batch(tiny_internvl):
    """The max_dynamic_patch=4 case above really mixes prompt lengths (so left padding is used)."""
    engine = TransformersEngine(str(tiny_internvl), max_new_tokens=1, max_dynamic_patch=4)
    inputs = engine.processor(
        text=[engine.chat_prompt(PROMPT)] * 5, images=_images(), padding=True, return_tensors="pt",
        **engine._image_kwargs(),
    )  # fmt: skip
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) > 1
    assert (inputs["attention_mask"][:, 0] == 0).any()  # padding on the left
    ctx = engine.processor.tokenizer.context_image_token_id
    assert (inputs["input_ids"][0] == ctx).sum() == 256  # the 448x448 image: one tile, no thumbnail


def _first_two_tokens(engine: TransformersEngine, image: Image.Image) -> list[int]:
    """Two greedy steps by hand, without the engine's generate."""
    inputs = engine.processor(
        text=[engine.chat_prompt(PROMPT)], images=[image], return_tensors="pt", **engine._image_kwargs()
    )
    tokens: list[int] = []
    with torch.inference_mode():
        for _ in range(2):
            tokens.append(int(engine.model(**inputs).logits[0, -1].argmax()))
            step = torch.tensor([[tokens[-1]]])
            inputs["input_ids"] = torch.cat([inputs["input_ids"], step], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(step)], dim=1)
    return tokens


def test_token_limit_gives_length(tiny_internvl):
    """Two new tokens: the engine's answers equal two greedy steps done by hand."""
    engine = TransformersEngine(str(tiny_internvl), max_new_tokens=2)
    tok = engine.processor.tokenizer
    eos = set(engine.model.generation_config.eos_token_id)
    images = _images()
    expected = []
    for image in images:
        ids = _first_two_tokens(engine, image)
        if ids[0] in eos:
            expected.append(Generation("", "stop"))
        elif ids[1] in eos:
            expected.append(Generation(tok.decode(ids[:1]).strip(), "stop"))
        else:
            expected.append(Generation(tok.decode(ids, skip_special_tokens=True).strip(), "length"))
    assert engine.generate(images, PROMPT) == expected
    assert any(g.finish_reason == "length" for g in expected)


def test_eos_gives_stop_and_ends_the_text(tiny_internvl):
    engine = TransformersEngine(str(tiny_internvl), max_new_tokens=6)
    images = _images()
    tok = engine.processor.tokenizer
    k, (first, second) = next(
        (i, ids) for i, ids in enumerate(_first_two_tokens(engine, im) for im in images) if ids[0] != ids[1]
    )
    assert engine.generate([images[k]], PROMPT)[0].finish_reason == "length"
    gen_config = engine.model.generation_config
    eos = list(gen_config.eos_token_id)

    # the model's second token becomes an end of turn: the answer is its first token, "stop"
    gen_config.eos_token_id = [*eos, second]
    after = engine.generate(images, PROMPT)
    assert after[k] == Generation(tok.decode([first], skip_special_tokens=True).strip(), "stop")

    # its first token: an empty answer
    gen_config.eos_token_id = [*eos, first]
    assert engine.generate([images[k]], PROMPT) == [Generation("", "stop")]


def test_bad_settings_are_refused(tiny_internvl):
    for kwargs in ({"max_new_tokens": 0}, {"max_dynamic_patch": 0}, {"image_size": 0}, {"dtype": "int8"}):
        with pytest.raises(ValueError):
            TransformersEngine(str(tiny_internvl), **kwargs)

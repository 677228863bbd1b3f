"""The vLLM engine: request building and output parsing run everywhere; the real engine needs vllm.

vLLM cannot be installed on CPU machines, so the real-engine test is skipped there.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from PIL import Image

from pipeline.engines.vllm_engine import build_messages, llm_kwargs, parse_outputs
from pipeline.prompts import PROMPTS


def test_messages_put_instruction_before_image():
    imgs = [Image.new("RGB", (448, 448)), Image.new("RGB", (448, 448), "white")]
    msgs = build_messages(imgs, PROMPTS["holistic"])
    assert len(msgs) == 2
    content = msgs[1][0]["content"]
    assert content[0] == {"type": "text", "text": PROMPTS["holistic"].text}
    assert content[1]["type"] == "image_pil" and content[1]["image_pil"] is imgs[1]


def test_llm_kwargs_production_settings():
    kw = llm_kwargs("OpenGVLab/InternVL3-14B-hf", 2, 1, 0, False, 4096, 0.9, "bfloat16")
    assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kw["mm_processor_cache_gb"] == 0
    assert kw["mm_processor_kwargs"]["max_dynamic_patch"] == 1
    assert kw["mm_processor_kwargs"]["crop_to_patches"] is False
    assert kw["trust_remote_code"] is False and kw["tensor_parallel_size"] == 2


def test_parse_outputs_finish_reasons():
    def out(text, reason):
        return SimpleNamespace(outputs=[SimpleNamespace(text=text, finish_reason=reason)])

    gens = parse_outputs([out("a", "stop"), out("b", "length"), out("c", None)])
    assert [(g.text, g.finish_reason) for g in gens] == [("a", "stop"), ("b", "length"), ("c", "length")]


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (GPU machines only)")
def test_real_vllm_engine_structured(tiny_models_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a GPU")
    from pipeline.engines.vllm_engine import VLLMEngine
    from pipeline.prompts import parse_structured

    engine = VLLMEngine(str(tiny_models_dir / "internvl3-tiny"), max_new_tokens=400, gpu_memory_utilization=0.3)
    gens = engine.generate([Image.new("RGB", (448, 448))] * 2, PROMPTS["structured"])
    assert len(gens) == 2
    for g in gens:
        if g.finish_reason == "stop":  # structured output forces schema-valid JSON
            parse_structured(g.text)

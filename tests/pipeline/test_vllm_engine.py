"""The vLLM engine: request building everywhere; the real engine on a GPU with vllm installed.

Everything before the GPU forward is checked against the real vLLM on CPU in
`test_vllm_frontend.py` (`make test-vllm`). The tests marked vllm here also need a GPU.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from PIL import Image, ImageDraw

from pipeline.engines.base import Prompt
from pipeline.engines.vllm_engine import build_messages, llm_kwargs, mm_processor_kwargs
from pipeline.prompts import PROMPTS, parse_structured


def test_messages_put_instruction_before_image():
    imgs = [Image.new("RGB", (448, 448)), Image.new("RGB", (448, 448), "white")]
    msgs = build_messages(imgs, PROMPTS["holistic"])
    assert len(msgs) == 2
    content = msgs[1][0]["content"]
    assert content[0] == {"type": "text", "text": PROMPTS["holistic"].text}
    assert content[1] == {"type": "image_pil", "image_pil": imgs[1]}
    with_ids = build_messages(imgs, PROMPTS["holistic"], ["a", "b"])
    assert [m[0]["content"][1]["uuid"] for m in with_ids] == ["a", "b"]


def test_llm_kwargs_production_settings():
    kw = llm_kwargs("OpenGVLab/InternVL3-14B-hf", 2, 1, 0, False, 4096, 0.9, "bfloat16")
    assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kw["mm_processor_cache_gb"] == 0 and kw["enable_prefix_caching"] is True
    assert kw["mm_processor_kwargs"] == {"crop_to_patches": False, "do_resize": False}
    assert kw["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert kw["trust_remote_code"] is False and kw["tensor_parallel_size"] == 2


def test_mm_processor_kwargs_per_processor():
    # the HF processor resizes itself unless the stage already resized to the 448 tile
    assert mm_processor_kwargs(1, 512) == {"crop_to_patches": False}
    assert mm_processor_kwargs(6, 896) == {"crop_to_patches": True, "max_patches": 6}
    # remote-code checkpoints: vLLM's own InternVL processor
    assert mm_processor_kwargs(1, 448, hf_format=False) == {"max_dynamic_patch": 1}


# The tiny model has random weights, so its answers are noise; the checks below hold for any weights.
# Under a schema whose longest answer is a few tokens, every answer must end within max_tokens.
TIGHT = Prompt(
    "tight-test",
    "Describe the head pose as one JSON object.",
    {
        "type": "object",
        "properties": {"pose": {"enum": ["left", "right", "frontal"]}},
        "required": ["pose"],
        "additionalProperties": False,
    },
)


def faces(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (448, 448), (30 + (7 * i) % 200, 90, 150))
        ImageDraw.Draw(img).ellipse((100 + i % 50, 90, 350, 380), fill=(200, 160 - i % 60, 130))
        out.append(img)
    return out


@pytest.fixture(scope="module")
def gpu_engine(tiny_models_dir):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make test-vllm installs it in .venv-vllm)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the vLLM engine forward needs a GPU")
    from pipeline.engines.vllm_engine import VLLMEngine

    return VLLMEngine(str(tiny_models_dir / "internvl3-tiny"), max_new_tokens=400, gpu_memory_utilization=0.3)


@pytest.mark.vllm
def test_real_vllm_engine_structured(gpu_engine):
    """Structured output: every answer under a schema that must end within max_tokens stops and
    matches the schema; every answer under the production schema that stops parses."""
    gens = gpu_engine.generate(faces(8), TIGHT)
    assert len(gens) == 8
    assert [g.finish_reason for g in gens] == ["stop"] * 8
    assert all(json.loads(g.text)["pose"] in ("left", "right", "frontal") for g in gens)
    gens = gpu_engine.generate(faces(4), PROMPTS["structured"])
    assert len(gens) == 4 and all(g.finish_reason in ("stop", "length") for g in gens)
    for g in gens:
        if g.finish_reason == "stop":
            parse_structured(g.text)


@pytest.mark.vllm
def test_real_vllm_engine_takes_a_whole_shard(gpu_engine):
    """One call with a shard's worth of requests (more than the engine batches at once) returns one
    finished, schema-valid answer per image; a wrongly sized image is refused before vLLM."""
    gens = gpu_engine.generate(faces(1000), TIGHT)
    assert len(gens) == 1000 and all(g.finish_reason == "stop" for g in gens)
    assert all(json.loads(g.text)["pose"] in ("left", "right", "frontal") for g in gens)
    with pytest.raises(ValueError, match="pre-resized"):
        gpu_engine.generate([Image.new("RGB", (512, 512))], TIGHT)

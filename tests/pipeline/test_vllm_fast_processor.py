"""vLLM's two documented ways to take the image processor off the CPU's critical path, against the
real vLLM (0.33) on CPU: `mm_processor_kwargs={"use_fast": True}` (the torchvision image processor)
and `{"device": ...}` (the processor's transforms on a device). Up to the forward, like
test_vllm_frontend.py; runs in `.venv-vllm` (`make test-vllm`).

What they show (docs/vllm.md has the figures): with transformers 5 the torchvision processor is
already the default, so `use_fast=True` is read but changes nothing, and the PIL one
(`use_fast=False`) gives the same pixel values to the model; `device` is read by the torchvision
processor, and vLLM refuses an accelerator there when the instance also runs the language model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (make test-vllm installs it in .venv-vllm)")

from pipeline.engines.vllm_engine import VLLMFrontend, llm_kwargs, mm_processor_kwargs  # noqa: E402
from pipeline.prompts import PROMPTS  # noqa: E402

from .test_vllm_frontend import (  # noqa: E402
    face,
    image_tokens,
    kwargs,
    pixel_values,
)

pytestmark = pytest.mark.vllm

ENGINE_KWARGS = {"crop_to_patches": False, "do_resize": False}
NOT_VALID = "is not a valid argument for this processor"


@pytest.fixture(scope="module")
def model(tiny_models_dir) -> Path:
    return tiny_models_dir / "internvl3-tiny"


def frontend_with(model: Path, **extra) -> VLLMFrontend:
    return VLLMFrontend({**kwargs(model), "mm_processor_kwargs": {**ENGINE_KWARGS, **extra}})


def image_processor(fe: VLLMFrontend):
    return fe.renderer.mm_processor.info.get_hf_processor().image_processor


@pytest.fixture(scope="module")
def images():
    return [face(448, seed) for seed in range(4)]


@pytest.fixture(scope="module")
def engine_render(model, images):
    fe = VLLMFrontend(kwargs(model))
    return fe, fe.render(images, PROMPTS["holistic"])


# ------------------------------------------------------------------ use_fast


def test_the_engines_image_processor_is_already_the_torchvision_one(engine_render):
    """No kwarg needed: transformers 5 loads the torchvision backend when torchvision is installed."""
    from transformers.image_processing_backends import TorchvisionBackend

    fe, _ = engine_render
    assert fe.model_config.multimodal_config.mm_processor_kwargs == ENGINE_KWARGS
    assert isinstance(image_processor(fe), TorchvisionBackend)


def test_use_fast_true_is_read_by_vllm_and_changes_nothing(model, images, engine_render, warnings_log):
    """vLLM forwards `use_fast` to transformers' processor loading, which reads it (its deprecation
    warning), and loads the same torchvision class: same tokens and pixels. It is also passed to every
    processor call, which ignores it with a warning: the reason the engine leaves it out."""
    fe_engine, engine_inputs = engine_render
    fe = frontend_with(model, use_fast=True)
    assert fe.model_config.multimodal_config.mm_processor_kwargs == {**ENGINE_KWARGS, "use_fast": True}
    inputs = fe.render(images, PROMPTS["holistic"])
    assert type(image_processor(fe)) is type(image_processor(fe_engine))
    assert any("`use_fast` parameter is deprecated" in m for m in warnings_log), warnings_log
    assert any(f"`use_fast` {NOT_VALID}" in m for m in warnings_log), warnings_log
    for a, b in zip(inputs, engine_inputs, strict=True):
        assert a["prompt_token_ids"] == b["prompt_token_ids"]
        assert pixel_values(a).equal(pixel_values(b))


def test_the_slow_pil_processor_gives_the_model_the_same_pixels(model, images, engine_render):
    """`use_fast=False` is the only other backend vLLM 0.33 loads (the PIL `GotOcr2ImageProcessorPil`).
    On pre-resized faces (no resize, rescale and normalise only) its float32 output is within 3e-7 of
    the torchvision one's, and the bfloat16 pixel values vLLM hands the model are equal."""
    fe_engine, engine_inputs = engine_render
    fe = frontend_with(model, use_fast=False)
    slow, fast = image_processor(fe), image_processor(fe_engine)
    assert type(slow).__name__ == "GotOcr2ImageProcessorPil" and type(slow) is not type(fast)
    inputs = fe.render(images, PROMPTS["holistic"])
    for a, b in zip(inputs, engine_inputs, strict=True):
        assert a["prompt_token_ids"] == b["prompt_token_ids"] and image_tokens(fe, a) == 256
        assert pixel_values(a).dtype == pixel_values(b).dtype and pixel_values(a).equal(pixel_values(b))
    call = dict(ENGINE_KWARGS, return_tensors="pt")
    diff = (slow(images, **call)["pixel_values"] - fast(images, **call)["pixel_values"]).abs()
    assert diff.max() < 1e-6


# ------------------------------------------------------------------ device


def model_config(kw: dict):
    """vLLM's model config from the engine's kwargs, as `LLM` and `VLLMFrontend` build it."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import EngineArgs

    args = {**kw, "structured_outputs_config": StructuredOutputsConfig(**kw["structured_outputs_config"])}
    return EngineArgs(**args).create_model_config()


def device_kwargs(model: Path, device: str | None) -> dict:
    return llm_kwargs(str(model), 1, 1, 0, False, 4096, 0.9, "auto", mm_processor_device=device)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_engine_passes_the_processor_device_to_vllms_config(model, device):
    kw = device_kwargs(model, device)
    assert kw["mm_processor_kwargs"] == {**ENGINE_KWARGS, "device": device}
    mm = model_config(kw).multimodal_config
    assert mm.mm_processor_kwargs == {**ENGINE_KWARGS, "device": device}
    assert mm.get_mm_processor_device_type() == device
    # the default adds nothing, and the remote-code checkpoints' processor has no device
    assert model_config(device_kwargs(model, None)).multimodal_config.mm_processor_kwargs == ENGINE_KWARGS
    with pytest.raises(ValueError, match="-hf checkpoint"):
        mm_processor_kwargs(1, hf_format=False, device=device)


def test_processor_device_cpu_is_read_and_changes_nothing(model, images, engine_render, warnings_log):
    """The torchvision processor takes `device` (no "not a valid argument" warning); on CPU the pixels
    and tokens are the engine's."""
    _, engine_inputs = engine_render
    inputs = VLLMFrontend(device_kwargs(model, "cpu")).render(images, PROMPTS["holistic"])
    assert not [m for m in warnings_log if NOT_VALID in m], warnings_log
    for a, b in zip(inputs, engine_inputs, strict=True):
        assert a["prompt_token_ids"] == b["prompt_token_ids"]
        assert pixel_values(a).equal(pixel_values(b))


def test_processor_device_cuda_reaches_the_image_processor(model):
    """The device goes through vLLM's processor into the torchvision transforms: on this machine,
    which has no GPU, the image's move to CUDA fails there, when vLLM's input processor first runs the
    processor (on dummy inputs, to size the encoder budget)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU the move would succeed (and vLLM refuses the setting: see below)")
    with pytest.raises(ValueError, match="Failed to apply InternVLProcessor.*'device': 'cuda'") as exc:
        VLLMFrontend(device_kwargs(model, "cuda"))
    cause = exc.value.__cause__
    assert isinstance(cause, RuntimeError | AssertionError), cause
    frames = []
    tb = cause.__traceback__
    while tb is not None:
        frames.append((Path(tb.tb_frame.f_code.co_filename).name, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    assert ("image_processing_backends.py", "process_image") in frames, frames


def test_vllm_refuses_a_cuda_processor_on_an_instance_that_runs_the_model(model, monkeypatch):
    """vLLM's own rule, which `VllmConfig` applies at start-up: only an encode-only instance of an
    encode/prefill/decode deployment may run the processor on the accelerator. The engine runs the
    language model in the same instance (no EC transfer config), so on a CUDA machine "cuda" is
    refused before any request. Only the platform's device name is set to CUDA's here; the check is
    vLLM's. "cpu" passes it."""
    from vllm.config import DeviceConfig, VllmConfig
    from vllm.platforms import current_platform

    mc = model_config(device_kwargs(model, "cuda"))
    config = VllmConfig(model_config=mc, device_config=DeviceConfig(device="cpu"))  # checks pass on CPU
    assert config.ec_transfer_config is None
    monkeypatch.setattr(current_platform, "device_type", "cuda")
    with pytest.raises(ValueError, match="also runs the language model"):
        mc.multimodal_config.validate_mm_processor_device(config.ec_transfer_config)
    model_config(device_kwargs(model, "cpu")).multimodal_config.validate_mm_processor_device(None)

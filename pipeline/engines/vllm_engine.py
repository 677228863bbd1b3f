"""The production caption engine: vLLM's offline `LLM`, one engine per GPU process.

Everything before the GPU forward is checked against the real vLLM 0.33 on CPU (`make test-vllm`):
the engine arguments, the chat rendering, vLLM's own InternVL processor, the structured-output
grammar and the output objects. Only `VLLMEngine` itself needs a GPU. The helpers here are plain
Python, so the main environment (no vLLM) imports and tests them too.
"""

from __future__ import annotations

import uuid
from typing import Any

from PIL import Image

from pipeline.engines.base import EngineInfo, Generation, Prompt

TILE = 448  # InternVL tile side: 14-pixel patches, pixel shuffle to 256 tokens per tile

# Engine-wide structured-output settings. The backend is named, not "auto", so a schema xgrammar
# cannot compile fails at request validation instead of silently switching backend. Without
# `disable_any_whitespace` the JSON grammar accepts unlimited whitespace between tokens, so a
# greedy model can loop on blanks until max_tokens; with it an answer's length is bounded by the
# schema. (xgrammar reads this flag from the engine config only, not per request.)
STRUCTURED_OUTPUTS_CONFIG: dict[str, Any] = {"backend": "xgrammar", "disable_any_whitespace": True}


def build_messages(
    images: list[Image.Image], prompt: Prompt, uuids: list[str] | None = None
) -> list[list[dict[str, Any]]]:
    """One single-turn conversation per image. The instruction comes first, the image after it, so
    every request shares the same token prefix and vLLM's prefix cache reuses it.

    `uuids` name the images for vLLM's caches instead of a hash of their pixels (see `fresh_uuids`).
    """
    messages = []
    for i, image in enumerate(images):
        part: dict[str, Any] = {"type": "image_pil", "image_pil": image}
        if uuids is not None:
            part["uuid"] = uuids[i]
        messages.append([{"role": "user", "content": [{"type": "text", "text": prompt.text}, part]}])
    return messages


def fresh_uuids(n: int) -> list[str]:
    """A new id per image. vLLM keys its multimodal caches (encoder outputs, prefix blocks) by a
    blake3 hash of each image's pixels, computed in the front-end. Every face is a different image,
    so nothing would be shared anyway; a fresh id skips the hash (0.18 ms of the front-end's ~5 ms
    per 448 image, measured) and can never make two requests share a cache entry."""
    return [uuid.uuid4().hex for _ in range(n)]


def mm_processor_kwargs(
    max_dynamic_patch: int, image_size: int = TILE, hf_format: bool = True, device: str | None = None
) -> dict[str, Any]:
    """Tiling settings, passing only keys the model's processor reads (others are dropped with a warning).

    - HF-format `-hf` checkpoints go through transformers' `InternVLProcessor`, whose defaults set
      `crop_to_patches=True`: a 1024 image becomes 9 tiles plus a thumbnail, 2,560 image tokens.
      `crop_to_patches=False` gives one tile (256 tokens). When the stage has already resized the
      image to the tile, `do_resize=False` skips the processor's own 448 -> 448 resize (the pixel
      values are identical; it saves about 0.3-0.5 ms of vLLM's ~5 ms front-end cost per image).
    - Remote-code checkpoints (`trust_remote_code`, `InternVLChatModel`) use vLLM's own InternVL
      image processor, which reads `max_dynamic_patch`.
    - `device` (default: none, the processor runs on CPU) is vLLM's `mm_processor_kwargs["device"]`:
      the torchvision image processor moves each image there before its transforms. vLLM 0.33 accepts
      "cpu" anywhere, but refuses the accelerator ("cuda") when the instance also runs the language
      model, as this engine always does: only an encode-only instance of an encode/prefill/decode
      deployment may preprocess on the GPU. Only the HF-format processor reads it.
    - `use_fast` is not passed: with transformers 5 the torchvision ("fast") image processor is
      already the default, and `use_fast=True` changes nothing but adds two warnings (see docs/vllm.md).
    """
    if not hf_format:
        if device is not None:
            raise ValueError("mm_processor_device needs an -hf checkpoint: vLLM's InternVLChat processor has none")
        return {"max_dynamic_patch": max_dynamic_patch}
    kwargs: dict[str, Any]
    if max_dynamic_patch > 1:
        kwargs = {"crop_to_patches": True, "max_patches": max_dynamic_patch}
    else:
        kwargs = {"crop_to_patches": False}
        if image_size == TILE:
            kwargs["do_resize"] = False
    if device is not None:
        kwargs["device"] = device
    return kwargs


def llm_kwargs(
    model: str,
    tensor_parallel_size: int,
    max_dynamic_patch: int,
    seed: int,
    trust_remote_code: bool,
    max_model_len: int,
    gpu_memory_utilization: float,
    dtype: str,
    image_size: int = TILE,
    mm_processor_device: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`; each one is an `EngineArgs` field (checked in the vllm tests)."""
    return {
        "model": model,
        "tensor_parallel_size": tensor_parallel_size,
        "trust_remote_code": trust_remote_code,
        "seed": seed,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        # Every face is a different image: caching processed inputs only costs memory.
        "mm_processor_cache_gb": 0,
        "mm_processor_kwargs": mm_processor_kwargs(
            max_dynamic_patch, image_size, hf_format=not trust_remote_code, device=mm_processor_device
        ),
        "enable_prefix_caching": True,
        "structured_outputs_config": dict(STRUCTURED_OUTPUTS_CONFIG),
    }


def sampling_params(prompt: Prompt, max_new_tokens: int) -> Any:
    """Greedy `SamplingParams`; structured prompts constrain the answer to their JSON schema."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_new_tokens}
    if prompt.json_schema is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(json=prompt.json_schema)
    return SamplingParams(**kwargs)


# vLLM's finish reasons (vllm.v1.engine.FinishReason) mapped to ours. "repetition" is vLLM cutting a
# looping answer: the text is incomplete, like one cut by max_tokens. "abort" and "error" mean the
# request failed, which must not pass for a caption.
_FINISH = {"stop": "stop", "length": "length", "repetition": "length"}


def parse_outputs(outputs: list[Any]) -> list[Generation]:
    """vLLM `RequestOutput`s to Generations, in order. A missing finish reason counts as a cut answer."""
    results = []
    for out in outputs:
        completion = out.outputs[0]
        reason = completion.finish_reason or "length"
        if reason not in _FINISH:
            raise RuntimeError(f"vLLM request {out.request_id} finished with {reason!r}")
        results.append(Generation(completion.text, _FINISH[reason]))
    return results


class VLLMFrontend:
    """The part of `LLM.chat` that runs in the calling process, built without a device.

    vLLM's own renderer (chat template, InternVL multimodal processor), input processor (request
    validation, structured-output backend choice) and output processor (detokenisation into
    `RequestOutput`), configured from `llm_kwargs` as `LLM` would be. Only the engine core, which
    runs the model on the GPU, is absent. Used by the vllm tests and the host benchmark.
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        from vllm.config import DeviceConfig, StructuredOutputsConfig, VllmConfig
        from vllm.engine.arg_utils import EngineArgs
        from vllm.entrypoints.common.offline import OfflineInferenceMixin
        from vllm.renderers import renderer_from_config
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.engine.output_processor import OutputProcessor

        args = dict(kwargs)
        # LLM turns this dict into the config but drops unknown keys silently; built strictly here,
        # a misspelt key raises.
        args["structured_outputs_config"] = StructuredOutputsConfig(**args["structured_outputs_config"])
        self.engine_args = EngineArgs(**args)
        self.model_config = self.engine_args.create_model_config()
        # LLMEngine builds this from EngineArgs.create_engine_config(), which needs a device; the
        # front-end reads only the model and structured-output parts.
        self.vllm_config = VllmConfig(
            model_config=self.model_config,
            structured_outputs_config=self.engine_args.create_structured_outputs_config(),
            device_config=DeviceConfig(device="cpu"),
        )
        self.renderer = renderer_from_config(self.vllm_config)
        self.input_processor = InputProcessor(self.vllm_config, self.renderer)
        self.output_processor = OutputProcessor(self.renderer.tokenizer, log_stats=False)
        # LLM.chat renders each conversation with this mixin's method; reuse it rather than copy it.
        self._offline = OfflineInferenceMixin()
        self._offline.renderer = self.renderer
        self._offline.model_config = self.model_config
        self._offline.chat_template = None

    @property
    def tokenizer(self) -> Any:
        return self.renderer.tokenizer

    def render(self, images: list[Image.Image], prompt: Prompt, hashed: bool = False) -> list[Any]:
        """Engine inputs (token ids, processed image, placeholders) exactly as `LLM.chat` renders the
        messages `VLLMEngine.generate` sends; `hashed` leaves out the ids, so vLLM hashes the pixels."""
        messages = build_messages(images, prompt, None if hashed else fresh_uuids(len(images)))
        return list(self._offline._preprocess_chat(messages))

    def add_request(self, request_id: str, engine_input: Any, params: Any) -> Any:
        """`LLMEngine.add_request` up to the hand-off to the engine core: returns the EngineCoreRequest."""
        from vllm.sampling_params import RequestOutputKind

        params = params.clone()
        params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM._add_request sets it
        request = self.input_processor.process_inputs(request_id, engine_input, params, supported_tasks=("generate",))
        self.input_processor.assign_request_id(request)
        self.output_processor.add_request(request, None)
        return request


class VLLMEngine:
    def __init__(
        self,
        model: str,
        max_new_tokens: int = 96,
        image_size: int = TILE,
        max_dynamic_patch: int = 1,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        trust_remote_code: bool = False,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        mm_processor_device: str | None = None,
    ) -> None:
        """`mm_processor_device`: where vLLM's image processor runs (see `mm_processor_kwargs`); default
        none, on CPU. vLLM 0.33 refuses "cuda" here, since this engine also runs the language model."""
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "the vllm engine needs vLLM and a GPU: pip install -e '.[vllm]' (or use --engine transformers)"
            ) from e
        kwargs = llm_kwargs(
            model,
            tensor_parallel_size,
            max_dynamic_patch,
            seed,
            trust_remote_code,
            max_model_len,
            gpu_memory_utilization,
            dtype,
            image_size,
            mm_processor_device,
        )
        self.llm = vllm.LLM(**kwargs)
        self.max_new_tokens = max_new_tokens
        self.image_size = image_size
        # With do_resize=False the processor trusts the stage's resize; check it rather than feed the
        # vision tower a wrong shape.
        self._exact_size = kwargs["mm_processor_kwargs"].get("do_resize") is False
        self.info = EngineInfo(
            engine="vllm",
            engine_version=vllm.__version__,
            model=model,
            image_size=image_size,
            max_dynamic_patch=max_dynamic_patch,
            max_new_tokens=max_new_tokens,
            decoding="greedy",
        )

    def sampling_params(self, prompt: Prompt) -> Any:
        return sampling_params(prompt, self.max_new_tokens)

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        """Caption any number of images in one call; hand it a whole shard (or more).

        `LLM.chat` renders and adds one request at a time, and the engine core runs in its own
        process, so the GPU starts on the first image while vLLM's processor (in this process, one
        thread) prepares the rest. Splitting a shard into small calls only adds a drain at the end of
        each call, where the batch empties before the next call refills it.
        """
        if not images:
            return []
        if self._exact_size:
            side = (self.image_size, self.image_size)
            wrong = next((im.size for im in images if im.size != side), None)
            if wrong is not None:
                raise ValueError(f"vllm engine expects images pre-resized to {side}, got {wrong}")
        messages = build_messages(images, prompt, fresh_uuids(len(images)))
        outputs = self.llm.chat(messages, self.sampling_params(prompt), use_tqdm=False)
        if len(outputs) != len(images):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(images)} requests")
        return parse_outputs(outputs)

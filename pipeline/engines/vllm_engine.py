"""The production caption engine: vLLM's offline `LLM`, one engine per GPU process.

Coded against vLLM's documented API (>= 0.12): `LLM.chat` with PIL image content parts, greedy
`SamplingParams`, and `StructuredOutputsParams(json=schema)` for structured captions. vLLM is an
optional extra (`pip install -e .[vllm]`) that cannot be installed on CPU machines, so everything
here except `VLLMEngine.__init__`/`generate` is plain Python, tested without vLLM.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipeline.engines.base import EngineInfo, Generation, Prompt


def build_messages(images: list[Image.Image], prompt: Prompt) -> list[list[dict[str, Any]]]:
    """One single-turn conversation per image. The instruction comes first, the image after it, so
    every request shares the same token prefix and vLLM's prefix cache reuses it."""
    return [
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt.text},
                    {"type": "image_pil", "image_pil": image},
                ],
            }
        ]
        for image in images
    ]


def mm_processor_kwargs(max_dynamic_patch: int) -> dict[str, Any]:
    """Tiling settings for both InternVL processor flavours.

    The remote-code processor reads `max_dynamic_patch`; the HF-format `-hf` checkpoints use
    transformers' GotOcr2 image processor, which reads `crop_to_patches`/`max_patches`. vLLM passes
    on only the keys the processor accepts. Images are also pre-resized to 448, so either way a
    face becomes one 448 tile of 256 tokens instead of 9 tiles plus a thumbnail (~2,560 tokens).
    """
    return {
        "max_dynamic_patch": max_dynamic_patch,
        "crop_to_patches": max_dynamic_patch > 1,
        "max_patches": max_dynamic_patch,
    }


def llm_kwargs(
    model: str,
    tensor_parallel_size: int,
    max_dynamic_patch: int,
    seed: int,
    trust_remote_code: bool,
    max_model_len: int,
    gpu_memory_utilization: float,
    dtype: str,
) -> dict[str, Any]:
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
        "mm_processor_kwargs": mm_processor_kwargs(max_dynamic_patch),
        "enable_prefix_caching": True,
    }


def parse_outputs(outputs: list[Any]) -> list[Generation]:
    """vLLM `RequestOutput`s to Generations. A missing finish reason counts as a cut answer."""
    results = []
    for out in outputs:
        completion = out.outputs[0]
        reason = completion.finish_reason or "length"
        results.append(Generation(completion.text, "length" if reason == "length" else "stop"))
    return results


class VLLMEngine:
    def __init__(
        self,
        model: str,
        max_new_tokens: int = 96,
        image_size: int = 448,
        max_dynamic_patch: int = 1,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        trust_remote_code: bool = False,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "the vllm engine needs vLLM on a GPU machine: pip install -e '.[vllm]' (or use --engine transformers)"
            ) from e
        self._vllm = vllm
        self.llm = vllm.LLM(
            **llm_kwargs(
                model,
                tensor_parallel_size,
                max_dynamic_patch,
                seed,
                trust_remote_code,
                max_model_len,
                gpu_memory_utilization,
                dtype,
            )
        )
        self.max_new_tokens = max_new_tokens
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
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_new_tokens}
        if prompt.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=prompt.json_schema)
        return SamplingParams(**kwargs)

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        outputs = self.llm.chat(build_messages(images, prompt), self.sampling_params(prompt), use_tqdm=False)
        return parse_outputs(outputs)

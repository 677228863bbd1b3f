"""The transformers caption engine: runs anywhere, CPU included.

`AutoProcessor` + `AutoModelForImageTextToText` on an InternVL3 `-hf` checkpoint (hub name or local
path), batched with left padding and decoded greedily. CI and the demo run it on the tiny model
from `demo.tiny_models`; on GPUs the vLLM engine is the production path.

Greedy outputs do not depend on the batch: generate derives position ids from the attention mask,
so a left-padded row sees the same positions as it would alone.
"""

from __future__ import annotations

import copy

import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from pipeline.engines.base import EngineInfo, Generation, Prompt

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersEngine:
    """A `CaptionEngine` on Hugging Face transformers."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        max_new_tokens: int = 96,
        image_size: int = 448,
        max_dynamic_patch: int = 1,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if max_dynamic_patch < 1:
            raise ValueError(f"max_dynamic_patch must be >= 1, got {max_dynamic_patch}")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")

        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.max_dynamic_patch = max_dynamic_patch
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batching
        self.model = AutoModelForImageTextToText.from_pretrained(
            model,
            dtype=_DTYPES.get(dtype, "auto"),
            trust_remote_code=trust_remote_code,
        )
        self.model.to(self.device).eval()
        self.info = EngineInfo(
            engine="transformers",
            engine_version=transformers.__version__,
            model=model,
            image_size=image_size,  # the stage resizes; the tile side itself comes from the checkpoint
            max_dynamic_patch=max_dynamic_patch,
            max_new_tokens=max_new_tokens,
            decoding="greedy",
        )

    def _image_kwargs(self) -> dict[str, object]:
        # InternVL's dynamic tiling: 1 means a single 448 tile (256 tokens); above 1 the processor
        # picks a tile grid of at most max_dynamic_patch tiles plus a thumbnail.
        if self.max_dynamic_patch == 1:
            return {"crop_to_patches": False}
        return {"crop_to_patches": True, "min_patches": 1, "max_patches": self.max_dynamic_patch}

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, list | tuple) else {int(eos)}

    def chat_prompt(self, prompt: Prompt) -> str:
        """The model's chat template applied to one request, before image tokens are expanded."""
        # Instruction before the image, as the vLLM engine does (prefix caching shares it).
        conversation = [{"role": "user", "content": [{"type": "text", "text": prompt.text}, {"type": "image"}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        """Caption a batch: one Generation per image, in order. Decoding is greedy.

        `prompt.json_schema` is not enforced here (transformers has no constrained decoding built
        in); the caption stage validates structured answers from either engine.
        """
        if not images:
            return []
        texts = [self.chat_prompt(prompt)] * len(images)
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt", **self._image_kwargs())
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)

        gen_config = copy.deepcopy(self.model.generation_config)
        gen_config.update(
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        if gen_config.pad_token_id is None:
            gen_config.pad_token_id = self.processor.tokenizer.pad_token_id
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=gen_config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()  # (B, <= max_new_tokens)

        eos_ids = self._eos_ids()
        results = []
        for row in new_tokens:
            end = next((i for i, tok in enumerate(row) if tok in eos_ids), None)
            # Cut by the token limit: no EOS, and every allowed token was generated.
            finish_reason = "length" if end is None and len(row) >= self.max_new_tokens else "stop"
            text = self.processor.tokenizer.decode(row[:end], skip_special_tokens=True).strip()
            results.append(Generation(text=text, finish_reason=finish_reason))
        return results

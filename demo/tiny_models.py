"""Tiny random-weight models for tests and the demo, built offline from configs.

`python -m demo.tiny_models --out DIR` writes:

- `DIR/internvl3-tiny`: an `InternVLForConditionalGeneration` in Hugging Face format, with its
  `InternVLProcessor` (GotOcr2 image processor, InternVL video processor, a byte-level BPE
  tokenizer trained here with the `tokenizers` library, and a Qwen2/InternVL-style chat
  template). It loads with `AutoProcessor` and `AutoModelForImageTextToText`, like
  `OpenGVLab/InternVL3-*-hf`, and keeps the real image path: 448-pixel tiles, 14-pixel patches,
  pixel shuffle to 256 tokens per tile. Only the widths and depths are tiny.
- `DIR/clip-tiny.json`: a tiny open_clip model config (standard 77-token context and 49408-token
  vocabulary, so open_clip's own tokenizer applies). Register it with `pipeline.clip_tower.register_model_config`, then
  `open_clip.create_model(name)` / `open_clip.get_tokenizer(name)`.

The weights are random: whatever these models write is noise, not a description of the image.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

INTERNVL_DIR = "internvl3-tiny"
CLIP_FILE = "clip-tiny.json"

# Token strings used by the InternVL3 -hf checkpoints.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a turn: the EOS token of generation
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, *IMAGE_TOKENS.values()]

# ImageNet statistics, as in the InternVL3 preprocessor configs.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
TILE = 448  # InternVL tile side
PATCH = 14  # ViT patch side: (448 / 14)^2 = 1024 patches, pixel shuffle 0.5 -> 256 tokens per tile
IMAGE_SEQ_LENGTH = (TILE // PATCH) ** 2 // 4

# The InternVL3 -hf chat template: each image becomes one <IMG_CONTEXT>, which the processor
# expands to <img> + 256 x <IMG_CONTEXT> per tile + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Built-in text the tokenizer's merges are learnt from: caption and prompt words, JSON punctuation,
# digits. Other words still encode, as several shorter pieces.
VOCAB_TEXT = """
The person is looking downward, upward, to the left, to the right, straight ahead at the camera.
The head is turned slightly, strongly, in profile, tilted up, tilted down; the gaze is directed away.
The expression is neutral, smiling, laughing, frowning, surprised, with an open mouth, closed mouth.
The lighting is soft, even, harsh, dim, bright, coming from the left, right, above, below, behind.
The background is blurred with indistinct blue, green, red, gray, grey, white, black, yellow,
purple, orange, brown, pink tones; plain, striped, checkered, patterned, dotted, gradient, outdoor,
indoor, wall, sky, studio. They are wearing glasses, sunglasses, a hat, a cap, a mask, earrings,
a necklace, a scarf, a shirt, clothes, and have a beard and mustache, stubble, no facial hair.
The hair is short, long, curly, straight, dark, light, covered. There are no significant
occlusions on the face; a hand, a microphone, an object, hair partially covers the eyes, nose,
mouth, cheek, chin, forehead, ears. Describe the head pose and gaze, facial expression, lighting,
background, accessories, facial hair, hair and occlusions of this face image in one short
paragraph of plain text under 60 words. Do not mention identity, name, gender, age or ethnicity.
Answer with a JSON object with the fields head_pose gaze expression lighting background
accessories facial_hair hair occlusions caption. Use only the fields given.
{ } [ ] " : , . ; ' ( ) - _ / ! ? 0 1 2 3 4 5 6 7 8 9 true false null yes none unknown
"""


# ---------------------------------------------------------------------------------------------
# InternVL3


def _build_tokenizer() -> Any:
    """A byte-level BPE tokenizer (as Qwen2's, only tiny), trained on `VOCAB_TEXT`.

    Its alphabet is printable ASCII, so the random model samples mostly whole words rather than
    stray bytes; characters outside it are dropped when encoding. Decoding is exact concatenation,
    which structured (JSON) decoding relies on.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # byte-level stand-ins: printable characters map to themselves, space to "Ġ", newline to "Ċ"
    alphabet = [c for c in string.printable if not c.isspace()] + ["Ġ", "Ċ"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    backend.train_from_iterator([VOCAB_TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        extra_special_tokens=dict(IMAGE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # decoder-only batching
        model_max_length=8192,
    )


def _build_processor(tokenizer: Any) -> Any:
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": TILE, "width": TILE}
    image_processor = GotOcr2ImageProcessor(
        size=size,
        crop_to_patches=False,
        min_patches=1,
        max_patches=12,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        do_convert_rgb=True,
    )
    video_processor = InternVLVideoProcessor(size=size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=IMAGE_SEQ_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def _build_config(tokenizer: Any) -> Any:
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    # A large init range and full layer scale make the random logits depend visibly on the
    # image; with the default 0.02 every image decodes to the same repeated token.
    init_range = 0.5
    # Head size 64 in both towers: the size every attention kernel supports (vLLM's included).
    vision = InternVLVisionConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=128,
        image_size=TILE,
        patch_size=PATCH,
        layer_scale_init_value=1.0,
        initializer_range=init_range,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        initializer_range=init_range,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=0.5,
    )


def build_tiny_internvl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight InternVL3 (model + processor) to `out_dir`; same seed, same weights."""
    import torch
    from transformers import InternVLForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = _build_tokenizer()
    processor = _build_processor(tokenizer)
    config = _build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = None
    gen.do_sample = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# CLIP

CLIP_TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    # context and vocabulary are CLIP's own, so open_clip's SimpleTokenizer (bundled) is used
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_clip_tiny(path: str | Path) -> Path:
    """Write the tiny open_clip config; the model name open_clip gives it is the file stem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(CLIP_TINY_CONFIG, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write internvl3-tiny/ and clip-tiny.json into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    summary = {
        "internvl": str(build_tiny_internvl(out / INTERNVL_DIR, seed=args.seed)),
        "clip": str(write_clip_tiny(out / CLIP_FILE)),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

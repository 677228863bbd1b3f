"""The tiny InternVL3 and CLIP: built offline, loaded through the same classes as real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from demo.tiny_models import build_tiny_internvl, write_clip_tiny
from pipeline.clip_tower import register_model_config


@pytest.fixture(scope="module")
def loaded(tiny_internvl):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_internvl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_internvl).eval()
    return processor, model


def _chat(processor, n: int = 1) -> list[str]:
    conv = [{"role": "user", "content": [{"type": "text", "text": "Describe the face."}, {"type": "image"}]}]
    return processor.apply_chat_template([conv] * n, add_generation_prompt=True, tokenize=False)


def test_loads_with_auto_classes_without_remote_code(tiny_internvl, loaded):
    from transformers import GotOcr2ImageProcessor, InternVLForConditionalGeneration, InternVLProcessor

    processor, model = loaded
    assert isinstance(processor, InternVLProcessor)
    assert isinstance(processor.image_processor, GotOcr2ImageProcessor)
    assert isinstance(model, InternVLForConditionalGeneration)
    config = json.loads((tiny_internvl / "config.json").read_text())
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert "auto_map" not in config  # nothing needs trust_remote_code
    tok = processor.tokenizer
    assert (tok.start_image_token, tok.end_image_token, tok.context_image_token, tok.video_token) == (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<video>",
    )
    assert model.config.image_token_id == tok.context_image_token_id
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"


def test_real_tile_geometry_and_tiny_widths(loaded):
    _, model = loaded
    vision, text = model.config.vision_config, model.config.text_config
    assert tuple(vision.image_size) == (448, 448) and tuple(vision.patch_size) == (14, 14)
    assert model.config.downsample_ratio == 0.5 and model.config.image_seq_length == 256
    assert vision.hidden_size <= 64 and text.hidden_size <= 128
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_processor_expands_one_image_token_to_256_per_tile(loaded):
    processor, model = loaded
    ctx = processor.tokenizer.context_image_token_id
    text = _chat(processor)[0]
    assert text.count("<IMG_CONTEXT>") == 1 and text.index("Describe") < text.index("<IMG_CONTEXT>")

    square = Image.new("RGB", (448, 448), (200, 120, 90))
    one = processor(text=[text], images=[square], return_tensors="pt", crop_to_patches=False)
    assert tuple(one["pixel_values"].shape) == (1, 3, 448, 448)
    assert int((one["input_ids"] == ctx).sum()) == 256

    # dynamic tiling: a 2:1 image gives 2 tiles plus a thumbnail
    wide = Image.new("RGB", (896, 448), (90, 120, 200))
    tiled = processor(text=[text], images=[wide], return_tensors="pt", crop_to_patches=True, max_patches=4)
    assert tuple(tiled["pixel_values"].shape) == (3, 3, 448, 448)
    assert int((tiled["input_ids"] == ctx).sum()) == 3 * 256

    with torch.inference_mode():
        feats = model.get_image_features(pixel_values=tiled["pixel_values"])
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    assert tuple(feats.shape) == (3, 256, model.config.text_config.hidden_size)


def test_generates_image_dependent_text(loaded):
    processor, model = loaded
    images = [Image.new("RGB", (448, 448), c) for c in ((250, 30, 30), (30, 30, 250), (30, 250, 30))]
    inputs = processor(text=_chat(processor, 3), images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)
    assert len(set(texts)) > 1  # the image reaches the language model


def test_same_seed_same_weights(tmp_path, tiny_internvl):
    a = build_tiny_internvl(tmp_path / "a", seed=0)
    b = build_tiny_internvl(tmp_path / "b", seed=1)
    weights = "model.safetensors"
    assert (a / weights).read_bytes() == (tiny_internvl / weights).read_bytes()
    assert (b / weights).read_bytes() != (a / weights).read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (tiny_internvl / "tokenizer.json").read_bytes()


def test_clip_tiny_builds_offline(tiny_models_dir):
    import open_clip

    path = tiny_models_dir / "clip-tiny.json"
    name, cfg = register_model_config(path), json.loads(path.read_text())
    assert name == "clip-tiny" and cfg["text_cfg"]["context_length"] == 77
    model = open_clip.create_model(name).eval()  # no `pretrained`: random weights, no download
    tokenizer = open_clip.get_tokenizer(name)
    tokens = tokenizer(["the person is looking downward", "a smiling face with glasses"])
    assert tuple(tokens.shape) == (2, 77)
    image = torch.rand(2, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    with torch.inference_mode():
        assert tuple(model.encode_text(tokens).shape) == (2, cfg["embed_dim"])
        assert tuple(model.encode_image(image).shape) == (2, cfg["embed_dim"])


def test_write_clip_tiny_and_cli(tmp_path):
    from demo.tiny_models import main

    path = write_clip_tiny(tmp_path / "x" / "clip-tiny.json")
    assert json.loads(path.read_text())["text_cfg"]["vocab_size"] == 49408
    summary = main(["--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "internvl3-tiny" / "config.json").is_file()
    assert summary["clip"].endswith("clip-tiny.json")

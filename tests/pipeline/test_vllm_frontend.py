"""The vLLM engine against the real vLLM (0.33) on CPU: everything before the GPU forward.

Runs in `.venv-vllm` (`make test-vllm`); skipped where vllm is not installed. Nothing of vLLM is
mocked: the engine arguments go through vLLM's `LLM`/`EngineArgs`, the requests through vLLM's own
renderer, InternVL processor and input processor, the structured prompt's schema through the
xgrammar backend the engine core uses, and the outputs through vLLM's output processor. Only the
engine core, which runs the model on a GPU, is replaced by the token ids it would send back.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("vllm", reason="vllm is not installed (make test-vllm installs it in .venv-vllm)")

from pipeline.engines.vllm_engine import (  # noqa: E402
    STRUCTURED_OUTPUTS_CONFIG,
    VLLMFrontend,
    llm_kwargs,
    parse_outputs,
    sampling_params,
)
from pipeline.prompts import ATTRIBUTES, PROMPTS, STRUCTURED_SCHEMA, parse_structured  # noqa: E402

pytestmark = pytest.mark.vllm  # offline: tests/conftest.py sets HF_HUB_OFFLINE=1 before any import

IMAGE_SEQ = 256  # tokens per 448 tile after pixel shuffle
IMG_CONTEXT = "<IMG_CONTEXT>"


def kwargs(model: Path, max_dynamic_patch: int = 1, image_size: int = 448) -> dict:
    return llm_kwargs(str(model), 1, max_dynamic_patch, 0, False, 4096, 0.9, "auto", image_size)


def face(side: int, seed: int = 0) -> Image.Image:
    """A JPEG-decoded RGB image with some structure, as the stage hands the engine."""
    img = Image.new("RGB", (side, side), (40 + 20 * seed, 90, 150))
    draw = ImageDraw.Draw(img)
    draw.ellipse((side // 4, side // 5, 3 * side // 4, 4 * side // 5), fill=(200, 160, 130))
    draw.rectangle((side // 3, side // 2, 2 * side // 3, side // 2 + side // 20), fill=(90, 40, 40))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def model(tiny_models_dir) -> Path:
    return tiny_models_dir / "internvl3-tiny"


@pytest.fixture(scope="module")
def frontend(model) -> VLLMFrontend:
    return VLLMFrontend(kwargs(model))


def image_tokens(fe: VLLMFrontend, engine_input: dict) -> int:
    context = fe.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    return sum(t == context for t in engine_input["prompt_token_ids"])


def pixel_values(engine_input: dict):
    (item,) = engine_input["mm_kwargs"]["image"]
    return item["pixel_values"].data


# ------------------------------------------------------------------ engine arguments


def test_llm_accepts_the_engine_arguments_up_to_the_device(model):
    """`vllm.LLM(**llm_kwargs(...))` gets through LLM's and EngineArgs' argument handling and stops
    only where it needs a device. A renamed or removed argument fails here with a TypeError."""
    import torch
    from vllm import LLM

    if torch.cuda.is_available():
        pytest.skip("with a GPU this would start the engine; test_vllm_engine.py covers that")
    with pytest.raises(RuntimeError) as exc:
        LLM(**kwargs(model))
    assert any(Path(str(entry.path)).match("vllm/config/device.py") for entry in exc.traceback), exc.value
    with pytest.raises(TypeError, match="mm_processor_cache_gbx"):
        LLM(**{**kwargs(model), "mm_processor_cache_gbx": 0})


def test_engine_args_build_the_model_config(frontend, model):
    from vllm.config import StructuredOutputsConfig

    mc = frontend.model_config
    assert mc.architectures == ["InternVLForConditionalGeneration"]
    assert mc.is_multimodal_model and mc.runner_type == "generate"
    assert mc.max_model_len == 4096 and not mc.trust_remote_code
    mm = mc.multimodal_config
    assert mm.get_limit_per_prompt("image") == 1 and mm.get_limit_per_prompt("video") == 0
    assert mm.mm_processor_cache_gb == 0
    assert mm.mm_processor_kwargs == {"crop_to_patches": False, "do_resize": False}
    assert frontend.engine_args.enable_prefix_caching is True
    so = frontend.vllm_config.structured_outputs_config
    assert (so.backend, so.disable_any_whitespace) == ("xgrammar", True)
    # LLM converts the dict keeping only init fields: every key must be one, or it vanishes silently.
    assert set(STRUCTURED_OUTPUTS_CONFIG) <= set(StructuredOutputsConfig.__dataclass_fields__)


def test_processor_is_vllms_internvl_hf_processor(frontend):
    from transformers import InternVLProcessor
    from vllm.model_executor.models.interns1 import InternS1MultiModalProcessor

    proc = frontend.renderer.mm_processor
    assert isinstance(proc, InternS1MultiModalProcessor)
    hf = proc.info.get_hf_processor()
    assert isinstance(hf, InternVLProcessor)
    # transformers 5 names the torchvision ("fast") image processor GotOcr2ImageProcessor
    assert type(hf.image_processor).__name__ == "GotOcr2ImageProcessor"


# ------------------------------------------------------------------ processor kwargs and image tokens


@pytest.mark.parametrize("max_dynamic_patch", [1, 6])
def test_mm_processor_kwargs_are_all_read(model, max_dynamic_patch, warnings_log):
    fe = VLLMFrontend(kwargs(model, max_dynamic_patch, image_size=448 if max_dynamic_patch == 1 else 896))
    fe.render([face(448 if max_dynamic_patch == 1 else 896)], PROMPTS["holistic"])
    assert not [m for m in warnings_log if "not a valid argument" in m], warnings_log


def test_old_mm_processor_kwargs_warned(model, warnings_log):
    """The control for the test above: the kwargs the engine used to pass do warn, and are captured."""
    old = {**kwargs(model), "mm_processor_kwargs": {"max_dynamic_patch": 1, "crop_to_patches": False, "max_patches": 1}}
    VLLMFrontend(old).render([face(448)], PROMPTS["holistic"])
    assert any("`max_dynamic_patch` is not a valid argument" in m for m in warnings_log), warnings_log


def test_pre_resized_face_is_one_tile_of_256_tokens(frontend):
    (ei,) = frontend.render([face(448)], PROMPTS["holistic"])
    assert image_tokens(frontend, ei) == IMAGE_SEQ
    assert tuple(pixel_values(ei).shape) == (1, 3, 448, 448)
    (ph,) = ei["mm_placeholders"]["image"]
    assert ph.length == IMAGE_SEQ + 2  # <img> + 256 x <IMG_CONTEXT> + </img>


def test_skipping_the_processor_resize_changes_no_pixel(model, frontend):
    """do_resize=False (the engine default at 448) must give the vision tower the same input."""
    resizing = {**kwargs(model), "mm_processor_kwargs": {"crop_to_patches": False}}
    img = face(448, seed=2)
    (a,) = frontend.render([img], PROMPTS["holistic"])
    (b,) = VLLMFrontend(resizing).render([img], PROMPTS["holistic"])
    assert a["prompt_token_ids"] == b["prompt_token_ids"]
    assert pixel_values(a).equal(pixel_values(b))


def test_fresh_ids_replace_the_pixel_hash(frontend):
    """The engine names each image with a fresh id: vLLM keys its caches by it instead of hashing the
    pixels, two requests never share an entry (even for the same image), and nothing else changes."""
    img = face(448, seed=3)
    a, b = frontend.render([img, img], PROMPTS["holistic"])
    (hashed,) = frontend.render([img], PROMPTS["holistic"], hashed=True)
    assert a["mm_hashes"]["image"] != b["mm_hashes"]["image"]
    assert all(len(ei["mm_hashes"]["image"][0]) == 32 for ei in (a, b))  # uuid4 hex, not a blake3 digest
    assert len(hashed["mm_hashes"]["image"][0]) != 32
    assert a["prompt_token_ids"] == hashed["prompt_token_ids"]
    assert pixel_values(a).equal(pixel_values(hashed))


def test_1024_image_with_the_checkpoint_defaults_is_2560_image_tokens(model):
    """What the engine avoids: with no kwargs InternVLProcessor crops to patches (9 tiles of a
    1024 square plus a thumbnail), 10 x 256 = 2,560 image tokens."""
    fe = VLLMFrontend({**kwargs(model), "mm_processor_kwargs": None})
    (ei,) = fe.render([face(1024)], PROMPTS["holistic"])
    assert image_tokens(fe, ei) == 10 * IMAGE_SEQ
    assert tuple(pixel_values(ei).shape) == (10, 3, 448, 448)


def test_1024_image_unresized_is_one_tile_with_crop_off(model):
    fe = VLLMFrontend(kwargs(model, image_size=1024))  # the processor resizes: do_resize kept
    assert fe.model_config.multimodal_config.mm_processor_kwargs == {"crop_to_patches": False}
    (ei,) = fe.render([face(1024)], PROMPTS["holistic"])
    assert image_tokens(fe, ei) == IMAGE_SEQ


def test_max_dynamic_patch_tiles_a_large_image(model):
    fe = VLLMFrontend(kwargs(model, max_dynamic_patch=6, image_size=896))
    (ei,) = fe.render([face(896)], PROMPTS["holistic"])
    assert image_tokens(fe, ei) == 5 * IMAGE_SEQ  # a 2 x 2 grid plus the thumbnail


# ------------------------------------------------------------------ the prompt


def test_chat_renders_instruction_then_image_with_the_model_template(frontend):
    prompt = PROMPTS["holistic"]
    a, b = frontend.render([face(448, 0), face(448, 1)], prompt)
    tok = frontend.tokenizer
    (pa,) = a["mm_placeholders"]["image"]
    (pb,) = b["mm_placeholders"]["image"]
    prefix = a["prompt_token_ids"][: pa.offset]
    assert tok.decode(prefix) == "<|im_start|>user\n" + prompt.text
    # The image sits after the instruction and the turn ends with the generation prompt, so all
    # requests share the instruction's tokens: one prefix-cache block of 16 tokens at least.
    assert pa.offset == pb.offset and b["prompt_token_ids"][: pb.offset] == prefix
    assert pa.offset >= 16
    assert tok.decode(a["prompt_token_ids"][pa.offset + pa.length :]) == "\n<|im_end|>\n<|im_start|>assistant\n"


def test_vllm_prompt_equals_the_transformers_processor_prompt(frontend, model):
    """vLLM's rendering (OpenAI-style parts, its own InternVL expansion) gives the same token ids as
    transformers' InternVLProcessor with the model's template, which the transformers engine feeds."""
    from transformers import AutoProcessor

    prompt = PROMPTS["structured"]
    img = face(448)
    (ei,) = frontend.render([img], prompt)
    hf = AutoProcessor.from_pretrained(model)
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt.text}, {"type": "image"}]}]
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = hf(text=text, images=[img], crop_to_patches=False, return_tensors="pt")["input_ids"][0].tolist()
    assert ei["prompt_token_ids"] == ids


# ------------------------------------------------------------------ structured output


@pytest.fixture(scope="module")
def structured_request(frontend):
    (ei,) = frontend.render([face(448)], PROMPTS["structured"])
    return frontend.add_request("structured", ei, sampling_params(PROMPTS["structured"], 512))


def test_structured_sampling_params_are_vllms_classes(structured_request):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    sp = sampling_params(PROMPTS["structured"], 512)
    assert isinstance(sp, SamplingParams) and isinstance(sp.structured_outputs, StructuredOutputsParams)
    assert sp.structured_outputs.json == STRUCTURED_SCHEMA and sp.temperature == 0.0 and sp.max_tokens == 512
    assert sampling_params(PROMPTS["holistic"], 96).structured_outputs is None
    # input validation chose xgrammar itself (the configured backend; no fallback)
    assert structured_request.sampling_params.structured_outputs._backend == "xgrammar"


@pytest.fixture(scope="module")
def grammar(frontend, structured_request):
    """A fresh compiled matcher for the request, as the engine core's StructuredOutputManager builds it."""
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend
    from vllm.v1.structured_output.request import get_structured_output_key

    vocab = frontend.model_config.get_vocab_size()
    backend = XgrammarBackend(frontend.vllm_config, tokenizer=frontend.tokenizer, vocab_size=vocab)
    params = structured_request.sampling_params
    key = get_structured_output_key(params.structured_outputs)
    return lambda: backend.compile_grammar(*key, stop_token_ids=params.all_stop_token_ids)


def accepts(frontend, grammar, text: str) -> bool:
    """Whether the grammar takes `text` and then the end-of-turn token, ending the answer."""
    g = grammar()
    ids = frontend.tokenizer.encode(text, add_special_tokens=False)
    return g.accept_tokens("t", ids) and g.accept_tokens("t", [frontend.tokenizer.eos_token_id]) and g.is_terminated()


def compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_structured_schema_compiles_and_constrains(frontend, grammar):
    answer = {a: "none" for a in ATTRIBUTES} | {"gaze": "x" * 160}
    assert accepts(frontend, grammar, compact(answer))
    assert parse_structured(compact(answer))["gaze"] == "x" * 160
    missing = {a: "none" for a in ATTRIBUTES if a != "gaze"}
    assert not accepts(frontend, grammar, compact(missing))
    assert not accepts(frontend, grammar, compact(answer | {"gaze": "x" * 161}))  # maxLength 160
    assert not accepts(frontend, grammar, compact(answer | {"name": "x"}))  # additionalProperties
    # no free whitespace (disable_any_whitespace): an answer cannot grow on blanks
    assert not accepts(frontend, grammar, json.dumps(answer, indent=2))
    g = grammar()
    assert g.accept_tokens("t", frontend.tokenizer.encode("{", add_special_tokens=False))
    assert not g.accept_tokens("t", frontend.tokenizer.encode(" ", add_special_tokens=False))


# ------------------------------------------------------------------ outputs


def test_parse_outputs_on_vllms_request_outputs(frontend):
    """Token ids as the engine core would return them, through vLLM's output processor (detokenisation,
    EOS handling) into real RequestOutput/CompletionOutput objects."""
    from vllm import CompletionOutput, RequestOutput
    from vllm.v1.engine import EngineCoreOutput, FinishReason

    tok = frontend.tokenizer
    text = "The person is looking downward. The background is blurred with indistinct blue tones."
    ids = tok.encode(text, add_special_tokens=False)
    inputs = frontend.render([face(448, 0), face(448, 1), face(448, 2)], PROMPTS["holistic"])
    params = sampling_params(PROMPTS["holistic"], 96)
    reqs = [frontend.add_request(str(i), ei, params) for i, ei in enumerate(inputs)]
    finished = frontend.output_processor.process_outputs(
        [
            EngineCoreOutput(reqs[0].request_id, ids + [tok.eos_token_id], finish_reason=FinishReason.STOP),
            EngineCoreOutput(reqs[1].request_id, ids[:5], finish_reason=FinishReason.LENGTH),
            EngineCoreOutput(reqs[2].request_id, ids[:3], finish_reason=FinishReason.REPETITION),
        ]
    ).request_outputs
    assert [type(o) for o in finished] == [RequestOutput] * 3
    assert all(type(o.outputs[0]) is CompletionOutput and o.finished for o in finished)
    gens = parse_outputs(finished)
    assert gens[0].text == text and gens[0].finish_reason == "stop"  # EOS ends it and is not in the text
    assert gens[1].text == tok.decode(ids[:5]) and gens[1].finish_reason == "length"
    assert gens[2].finish_reason == "length"  # cut as a loop: incomplete, flagged truncated downstream


def test_parse_outputs_refuses_aborted_requests(frontend):
    from vllm.v1.engine import EngineCoreOutput, FinishReason

    (ei,) = frontend.render([face(448)], PROMPTS["holistic"])
    req = frontend.add_request("aborted", ei, sampling_params(PROMPTS["holistic"], 96))
    (out,) = frontend.output_processor.process_outputs(
        [EngineCoreOutput(req.request_id, [], finish_reason=FinishReason.ABORT)]
    ).request_outputs
    with pytest.raises(RuntimeError, match="abort"):
        parse_outputs([out])


def test_remote_code_kwargs_fit_vllms_internvl_chat_processor():
    """`trust_remote_code` checkpoints (InternVLChatModel) get vLLM's own image processor, built
    from the configured mm_processor_kwargs plus the model config's defaults; it takes no HF keys."""
    from vllm.transformers_utils.processors.internvl import InternVLChatImageProcessor

    defaults = {"image_size": 448, "min_dynamic_patch": 1, "dynamic_image_size": True, "use_thumbnail": True}
    kw = llm_kwargs("OpenGVLab/InternVL3-14B", 1, 1, 0, True, 4096, 0.9, "auto")["mm_processor_kwargs"]
    assert InternVLChatImageProcessor(**defaults, **kw).max_dynamic_patch == 1
    with pytest.raises(TypeError):
        InternVLChatImageProcessor(**defaults, max_dynamic_patch=1, crop_to_patches=False)

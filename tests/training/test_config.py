"""The trainer's config: presets and `base:` inheritance, `--set` overrides, validation, the dataset's CLIP
(`clip_model: auto`), and the frozen networks' weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.dataset import DatasetDir, clip_tag
from pipeline.embeddings import write_clip_record
from tests.training.run_builders import CLIP_NAME, REPO
from training.config import LossConfig, TrainConfig, apply_overrides, load_config, parse_yaml, read_yaml
from training.models.weights import MissingWeights

CONFIGS = REPO / "training" / "configs"
TAG = f"{CLIP_NAME}__none"  # what the train_data fixture was embedded with


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Presets and base: inheritance


def test_official_preset_is_the_full_default_and_the_others_are_small_diffs():
    official = load_config(CONFIGS / "alphaface.yaml")
    assert official == TrainConfig()  # alphaface.yaml spells out every default
    assert set(yaml.safe_load((CONFIGS / "alphaface.yaml").read_text())) == set(TrainConfig().to_dict())
    # the recipe of docs/design.md §7
    assert (official.lr_g, official.lr_d, official.betas, official.weight_decay) == (1e-4, 1e-4, (0.0, 0.99), 5e-4)
    assert (official.lr_step, official.lr_gamma, official.grad_clip) == (20_000, 0.97, 1.0)
    loss = official.loss
    assert (loss.id_weight, loss.rec_weight, loss.perceptual_weight, loss.cycle_weight, loss.mask_weight) == (
        10, 0.5, 0.5, 0.5, 0.5,
    )  # fmt: skip
    # adversarial phase when the official global_step > adv_sess (200000): 0-based step 200001 on
    assert (loss.clip_id_weight, loss.clip_text_weight, loss.adv_weight, loss.adv_start_step) == (1, 1, 1, 200_001)
    assert official.pair_rates == {"random": 1.0, "same_identity": 0.0, "self": 0.0}
    assert not official.allow_random_weights

    fast = yaml.safe_load((CONFIGS / "alphaface-fast.yaml").read_text())
    assert fast == {"base": "alphaface-improved.yaml", "generator": "alphaface-fast"}
    improved = load_config(CONFIGS / "alphaface-improved.yaml")
    assert load_config(CONFIGS / "alphaface-fast.yaml") == dataclasses.replace(improved, generator="alphaface-fast")
    # only demo.yaml allows random weights
    for path in CONFIGS.glob("*.yaml"):
        assert load_config(path).allow_random_weights == (path.name == "demo.yaml"), path


def test_base_chain_is_relative_to_each_file_and_mappings_merge_key_by_key(tmp_path):
    root = """
lr_g: 3.0e-4
batch_size: 4
trackers: [tensorboard, wandb]
loss: {id_weight: 3, rec_weight: 2}
pairs: {random: 1.0}
discriminator: {base_channels: 16}
"""
    mid = """
base: root.yaml
batch_size: 8
loss: {rec_weight: 5}
pairs: {self: 1.0}
generator_overrides: {eps: 1.0e-5}
"""
    child = """
base: ../presets/mid.yaml  # relative to this file
trackers: []
discriminator: {max_channels: 32}
"""
    _write(tmp_path / "presets" / "root.yaml", root)
    _write(tmp_path / "presets" / "mid.yaml", mid)
    child = _write(tmp_path / "runs" / "child.yaml", child)
    merged = read_yaml(child)
    assert "base" not in merged
    assert merged["batch_size"] == 8 and merged["lr_g"] == 3e-4  # the nearer file wins; the rest is inherited
    assert merged["trackers"] == []  # lists are replaced, not merged
    assert merged["loss"] == {"id_weight": 3, "rec_weight": 5}
    assert merged["pairs"] == {"random": 1.0, "self": 1.0}
    assert merged["discriminator"] == {"base_channels": 16, "max_channels": 32}
    cfg = load_config(child)
    assert cfg.loss == dataclasses.replace(LossConfig(), id_weight=3.0, rec_weight=5.0)  # the rest: defaults
    assert cfg.pair_rates == {"random": 0.5, "same_identity": 0.0, "self": 0.5}
    assert cfg.generator_overrides == {"eps": 1e-5} and cfg.trackers == ()


def test_preset_scalars_are_yaml_1_2(tmp_path):
    cfg = load_config(_write(tmp_path / "c.yaml", "mixed_precision: no\nlr_g: 1e-4\nweight_decay: 5E-4\nflip: 1\n"))
    assert cfg.mixed_precision == "no"  # not False, as YAML 1.1 reads it
    assert (cfg.lr_g, cfg.weight_decay, cfg.flip) == (1e-4, 5e-4, 1.0) and isinstance(cfg.flip, float)
    with pytest.raises(ValueError, match="use_masks must be true or false, got 'yes'"):
        load_config(_write(tmp_path / "d.yaml", "use_masks: yes\n"))
    assert load_config(_write(tmp_path / "empty.yaml", "# nothing set\n")) == TrainConfig()


def test_inheritance_cycles_and_bad_files_are_refused(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: sub/../a.yaml\n")  # the same file by another spelling
    with pytest.raises(ValueError, match=r"config inheritance cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\nlr_g: 1\n")
    with pytest.raises(ValueError, match="cycle"):
        read_yaml(tmp_path / "self.yaml")
    _write(tmp_path / "orphan.yaml", "base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(_write(tmp_path / "list.yaml", "- lr_g: 1\n"))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['batchsize'\] \(did you mean 'batch_size'\?\)"):
        load_config(_write(tmp_path / "typo.yaml", "batchsize: 4\n"))


def test_resolved_config_reads_back_unchanged(tmp_path):
    cfg = load_config(
        CONFIGS / "demo.yaml",
        ["loss.adv_start_step=7", "pairs.same_identity=0.25", "trackers=[wandb]", "betas=[0.5, 0.9]"],
        data=("/data/a", "/data/b"),
        output="/runs/x",
    )
    back = load_config(_write(tmp_path / "config.yaml", cfg.dump_yaml()))
    assert back == cfg
    assert back.mixed_precision == "no" and back.betas == (0.5, 0.9) and back.data == ("/data/a", "/data/b")
    assert yaml.safe_load(cfg.dump_yaml()) == cfg.to_dict()  # plain data: a safe loader reads it


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_are_parsed_as_yaml_never_evaluated(tmp_path):
    cfg = load_config(
        CONFIGS / "demo.yaml",
        ["lr_g=2e-4", "loss.adv_start_step=1e3", "pairs.self=0.5", "trackers=[tensorboard, wandb]", "flip=0"],
    )
    assert cfg.lr_g == 2e-4 and cfg.loss.adv_start_step == 1000 and cfg.trackers == ("tensorboard", "wandb")
    assert cfg.loss.id_weight == 10.0  # the rest of the loss mapping is kept
    assert cfg.pair_rates == {"random": 2 / 3, "same_identity": 0.0, "self": 1 / 3}
    with pytest.raises(ValueError, match="seed must be a number"):
        load_config(None, ["seed=__import__('os').getcwd()"])  # a string, not code
    with pytest.raises(ValueError, match="did you mean 'lr_g'"):
        load_config(None, ["lr_gg=1"])
    with pytest.raises(ValueError, match="loss: unknown field"):
        load_config(None, ["loss.idd_weight=1"])
    with pytest.raises(ValueError, match="pairs must map"):
        load_config(None, ["pairs.sideways=1"])
    # a child preset merges its mappings into the base's; cycles are refused
    (tmp_path / "a.yaml").write_text("base: b.yaml\nloss: {rec_weight: 2}\n")
    (tmp_path / "b.yaml").write_text(f"base: {CONFIGS / 'alphaface.yaml'}\nloss: {{id_weight: 3}}\n")
    merged = load_config(tmp_path / "a.yaml").loss
    assert (merged.id_weight, merged.rec_weight, merged.adv_start_step) == (3, 2, 200_001)
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        read_yaml(tmp_path / "a.yaml")


def test_python_tags_are_refused_by_the_safe_loader():
    with pytest.raises(yaml.constructor.ConstructorError):
        load_config(None, ["seed=!!python/object/apply:os.getcwd []"])
    with pytest.raises(yaml.constructor.ConstructorError):
        parse_yaml("x: !!python/name:os.system\n")


def test_override_values_are_yaml_scalars_and_collections():
    cfg = load_config(
        None,
        ["output=runs/a=b", "mixed_precision=no", "seed=0x10", "max_steps=2e3", "use_masks=false",
         "data=[/d/one, /d/two]", "init_from=null", "id_weights=", "betas=[0.5, 0.9]"],
    )  # fmt: skip
    assert cfg.output == "runs/a=b"  # only the first '=' separates key and value
    assert cfg.mixed_precision == "no" and cfg.seed == 16 and cfg.max_steps == 2000 and cfg.use_masks is False
    assert cfg.data == ("/d/one", "/d/two") and cfg.init_from is None and cfg.id_weights is None
    assert cfg.betas == (0.5, 0.9)


def test_overrides_apply_after_the_file_and_the_command_line_fields_in_order(tmp_path):
    preset = _write(tmp_path / "p.yaml", f"base: {CONFIGS / 'demo.yaml'}\nloss: {{rec_weight: 2}}\nseed: 1\n")
    cfg = load_config(preset, ["seed=3", "loss.rec_weight=4", "loss.rec_weight=5"], seed=2, max_steps=9)
    assert cfg.seed == 3 and cfg.max_steps == 9  # --set beats --max-steps style fields, which beat the file
    assert cfg.loss.rec_weight == 5.0 and cfg.loss.adv_start_step == 2  # demo.yaml's loss entry is kept
    assert load_config(preset, max_steps=None).max_steps == 4  # an unset command-line field keeps the file's


def test_nested_overrides_reach_into_each_mapping_field():
    cfg = load_config(
        None,
        ["generator_overrides.caii_mode=bidirectional", "discriminator.base_channels=8",
         "loss.adv_loss=hinge", "loss.train_d_before_adv=true"],
    )  # fmt: skip
    assert cfg.generator_overrides == {"caii_mode": "bidirectional"}
    assert cfg.discriminator == {"base_channels": 8}
    preset = load_config(CONFIGS / "alphaface.yaml", ["pairs.self=1"])  # the preset's other kinds are kept
    assert preset.pairs == {"random": 1.0, "same_identity": 0.0, "self": 1.0}
    assert cfg.loss.adv_loss == "hinge" and cfg.loss.train_d_before_adv is True
    # apply_overrides leaves its input alone: a preset's mapping is copied, not edited
    values = {"loss": {"id_weight": 1.0}, "pairs": {"random": 1.0}}
    out = apply_overrides(values, ["loss.rec_weight=3", "pairs.self=2"])
    assert values == {"loss": {"id_weight": 1.0}, "pairs": {"random": 1.0}}
    assert out == {"loss": {"id_weight": 1.0, "rec_weight": 3}, "pairs": {"random": 1.0, "self": 2}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr_gg=1", r"unknown config key 'lr_gg' \(did you mean 'lr_g'\?\)"),
        ("batchsize=4", r"did you mean 'batch_size'"),
        ("zzz=1", r"unknown config key 'zzz'$"),  # nothing close: no suggestion
        ("lss.id_weight=1", r"unknown config key 'lss' \(did you mean 'loss'\?\)"),
        ("max_steps.x=1", r"'max_steps' is not a mapping field"),
        ("lr_g", r"--set expects key=value, got 'lr_g'"),
        ("=3", r"--set expects key=value"),
        ("loss.idd_weight=1", r"loss: unknown field\(s\) \['idd_weight'\]"),
        ("generator_overrides.caii_modee=x", r"generator_overrides: unknown field\(s\) \['caii_modee'\]"),
        ("discriminator.image_size=64", r"discriminator: unknown field\(s\) \['image_size'\]"),  # the trainer's own
        ("max_steps=1.5", r"max_steps must be an integer, got 1.5"),
        ("loss.adv_start_step=0.5", r"loss.adv_start_step must be an integer"),
        ("batch_size=true", r"batch_size must be a number, got True"),
        ("loss.clip_x255=1", r"loss.clip_x255 must be true or false, got 1"),
        ("lr_g=fast", r"lr_g must be a number, got 'fast'"),
    ],
)
def test_bad_overrides_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_an_infinite_integer_is_refused_as_a_value_error():
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        load_config(None, ["max_steps=.inf"])


@pytest.mark.parametrize("name", ["pairs", "generator_overrides", "discriminator"])
def test_an_empty_mapping_field_in_a_preset_is_its_default_or_a_clear_error(tmp_path, name):
    path = _write(tmp_path / "c.yaml", f"{name}:\n  # every entry commented out\n")
    try:
        cfg = load_config(path)
    except ValueError:
        return  # a clear refusal, which training.train prints, would do as well
    assert getattr(cfg, name) == getattr(TrainConfig(), name)


def test_a_nested_pairs_override_without_a_preset_starts_from_the_default_pairs():
    assert load_config(None, ["pairs.self=0.5"]) == load_config(CONFIGS / "alphaface.yaml", ["pairs.self=0.5"])


def test_a_null_loss_mapping_is_the_official_loss():
    assert load_config(None, ["loss=null"]).loss == LossConfig()


# ---------------------------------------------------------------------------------------------
# Validation


def test_values_are_normalised():
    cfg = TrainConfig(data=Path("/d"), betas=[0, 0.5], trackers=["wandb"], loss={"id_weight": 2})
    assert cfg.data == ("/d",) and cfg.betas == (0.0, 0.5) and cfg.trackers == ("wandb",)
    assert cfg.loss == dataclasses.replace(LossConfig(), id_weight=2.0)
    assert TrainConfig(data="x").data == ("x",)  # one path, not its characters
    assert TrainConfig(pairs={"self": 3.0, "random": 1.0}).pair_rates == {
        "random": 0.25, "same_identity": 0.0, "self": 0.75,
    }  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr_g = 1.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
        ({"vgg_input_size": 0}, "vgg_input_size must be >= 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
        ({"shuffle_buffer": 0}, "shuffle_buffer must be >= 1"),
        ({"num_workers": -1}, "num_workers and num_samples must be >= 0"),
        ({"num_samples": -1}, "num_workers and num_samples must be >= 0"),
        ({"pairs": {"sideways": 1.0}}, "pairs must map"),
        ({"pairs": {"random": -1.0, "self": 2.0}}, "pairs must map"),
        ({"pairs": {"random": 0.0}}, "positive sum"),
        ({"flip": 1.5}, "flip must be a probability"),
        ({"flip": -0.1}, "flip must be a probability"),
        ({"generator": "stylegan"}, "generator must be one of"),
        ({"generator_overrides": {"width": 3}}, r"generator_overrides: unknown field\(s\) \['width'\]"),
        ({"discriminator": {"image_size": 64}}, r"discriminator: unknown field\(s\) \['image_size'\]"),
        ({"id_arch": "r18"}, "id_arch must be one of"),
        ({"id_arch": "tiny"}, "id_arch tiny is a random test network"),
        ({"id_arch": "tiny", "allow_random_weights": True, "id_weights": "w.pth"}, "id_arch tiny"),
        ({"clip_model": "", "clip_pretrained": "none"}, "must name the CLIP the dataset was embedded with"),
        ({"clip_model": "auto", "clip_pretrained": "openai"}, "clip_pretrained is set but clip_model is auto"),
        ({"lr_g": 0.0}, "need lr_g, lr_d > 0"),
        ({"lr_d": -1e-4}, "need lr_g, lr_d > 0"),
        ({"weight_decay": -1.0}, "weight_decay >= 0"),
        ({"lr_gamma": 0.0}, "0 < lr_gamma <= 1"),
        ({"lr_gamma": 1.5}, "0 < lr_gamma <= 1"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
        ({"betas": (0.9,)}, "betas must be two numbers"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
        ({"device": "cuda"}, "device must be auto or cpu"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"trackers": ("mlflow",)}, "trackers must be among"),
        ({"loss": {"id_weight": -1}}, "loss weights must be >= 0"),
    ],
)
def test_bad_values_are_refused_with_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_the_edges_of_each_range_are_allowed():
    cfg = TrainConfig(flip=0.0, ema_decay=0.0, grad_clip=0.0, lr_gamma=1.0, weight_decay=0.0, betas=(0.0, 0.0),
                      num_workers=0, num_samples=0, pairs={"same_identity": 1.0}, trackers=())  # fmt: skip
    assert cfg.pair_rates == {"random": 0.0, "same_identity": 1.0, "self": 0.0}
    assert TrainConfig(id_arch="tiny", allow_random_weights=True).id_arch == "tiny"


@pytest.mark.parametrize("override", ["grad_clip=.nan", "pairs.random=.nan"])
def test_nan_is_refused(override):
    with pytest.raises(ValueError):
        load_config(None, [override])


# ---------------------------------------------------------------------------------------------
# clip_model: auto, from the record pipeline.embed writes beside the embeddings


def _copy(train_data: Path, dest: Path, embeddings: bool = True) -> Path:
    ignore = None if embeddings else shutil.ignore_patterns("embeddings")
    return Path(shutil.copytree(train_data, dest, ignore=ignore))


def test_auto_resolves_to_the_recorded_model_config_copy(tmp_path, train_data, train_clip):
    data = _copy(train_data, tmp_path / "vgg")
    cfg = TrainConfig(data=(str(data),), allow_random_weights=True)
    assert (cfg.clip_model, cfg.clip_pretrained) == ("auto", "auto")
    resolved = cfg.with_dataset_clip()
    model = Path(resolved.clip_model)
    assert model == DatasetDir(data).embeddings_dir(TAG) / "model_config" / f"{CLIP_NAME}.json"
    assert model.read_bytes() == train_clip.read_bytes()  # the config travels with the data
    assert resolved.clip_pretrained == "none"
    assert clip_tag(resolved.clip_model, resolved.clip_pretrained) == TAG  # names the folder it came from
    assert dataclasses.replace(resolved, clip_model="auto", clip_pretrained="auto") == cfg  # nothing else changed
    assert resolved.with_dataset_clip() == resolved


def test_explicit_clip_is_kept_without_reading_the_data(tmp_path):
    cfg = TrainConfig(data=(str(tmp_path / "not-a-dataset"),), clip_model="ViT-B-32", clip_pretrained="openai")
    assert cfg.with_dataset_clip() is cfg


def test_auto_with_several_tags_names_them(tmp_path, train_data):
    data = _copy(train_data, tmp_path / "vgg")
    other = clip_tag("ViT-B-32", "openai")
    write_clip_record(DatasetDir(data), other, "ViT-B-32", "openai")
    cfg = TrainConfig(data=(str(data),))
    with pytest.raises(ValueError, match="clip_model: auto found several CLIP tags") as err:
        cfg.with_dataset_clip()
    message = str(err.value)
    assert f"{other}, {TAG}" in message and str(data) in message and "set clip_model and clip_pretrained" in message
    # with the tiny CLIP's embeddings gone, the other tag is the one: a model name, not a config file
    shutil.rmtree(DatasetDir(data).embeddings_dir(TAG))
    resolved = cfg.with_dataset_clip()
    assert (resolved.clip_model, resolved.clip_pretrained) == ("ViT-B-32", "openai")


def test_auto_with_no_embeddings_names_the_dataset(tmp_path, train_data):
    bare = _copy(train_data, tmp_path / "bare", embeddings=False)
    with pytest.raises(FileNotFoundError, match=rf"{bare} has no embeddings yet: run python -m pipeline.embed"):
        TrainConfig(data=(str(bare),)).with_dataset_clip()
    with pytest.raises(ValueError, match=r"no CLIP tag common to the datasets \(\)"):
        TrainConfig().with_dataset_clip()  # no data at all


def test_auto_over_several_datasets_takes_the_tag_they_share(tmp_path, train_data):
    a, b = _copy(train_data, tmp_path / "a"), _copy(train_data, tmp_path / "b")
    write_clip_record(DatasetDir(b), "ViT-B-32__openai", "ViT-B-32", "openai")  # b also has another CLIP's
    (DatasetDir(a).embeddings_root / f".{TAG}.tmp").mkdir()  # a killed writer's hidden folder is no tag
    resolved = TrainConfig(data=(str(a), str(b))).with_dataset_clip()
    assert resolved.clip_pretrained == "none" and clip_tag(resolved.clip_model, "none") == TAG
    # rename b's tiny-CLIP folder: now the datasets share no tag, and the error lists each one's
    DatasetDir(b).embeddings_dir(TAG).rename(DatasetDir(b).embeddings_dir("tiny-v2__none"))
    with pytest.raises(ValueError, match="no CLIP tag common") as err:
        TrainConfig(data=(str(a), str(b))).with_dataset_clip()
    assert f"{a}: {TAG}" in str(err.value) and f"{b}: ViT-B-32__openai, tiny-v2__none" in str(err.value)


def test_auto_on_data_embedded_before_the_record_existed_says_how_to_fix_it(tmp_path, train_data):
    data = _copy(train_data, tmp_path / "old")
    (DatasetDir(data).embeddings_dir(TAG) / "clip.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no clip\.json .*rerun the same `python -m pipeline\.embed`"):
        TrainConfig(data=(str(data),)).with_dataset_clip()


# ---------------------------------------------------------------------------------------------
# The frozen networks' weights


def _all_weights(tmp_path: Path) -> dict[str, str]:
    files = {"id_weights": "w600k_r50.pth", "emap": "emap.npy", "vgg_weights": "vgg16-397923af.pth"}
    return {k: str(_write(tmp_path / v, "x")) for k, v in files.items()}


def test_missing_weights_lists_each_frozen_network_that_needs_them():
    base = TrainConfig(clip_model="ViT-B-32", clip_pretrained="none")
    missing = base.missing_weights()
    assert [m.split(" ")[0] for m in missing] == ["id_weights", "emap", "vgg_weights", "clip_pretrained"]
    assert TrainConfig().missing_weights()[-1].startswith("vgg_weights")  # auto: the dataset's CLIP, not "none"
    # a network that no loss term uses needs no weights
    unused = dataclasses.replace(
        base, use_emap=False, loss=dataclasses.replace(LossConfig(), perceptual_weight=0.0, clip_id_weight=0.0,
                                                       clip_text_weight=0.0),
    )  # fmt: skip
    assert [m.split(" ")[0] for m in unused.missing_weights()] == ["id_weights"]
    only_text = dataclasses.replace(base, loss=dataclasses.replace(LossConfig(), clip_id_weight=0.0))
    assert "clip_pretrained" in only_text.missing_weights()[-1]  # either CLIP term needs the CLIP
    assert dataclasses.replace(base, allow_random_weights=True).missing_weights() == []


def test_check_weights_refuses_missing_weights_and_paths_that_are_not_files(tmp_path):
    with pytest.raises(MissingWeights, match="missing: id_weights .*; emap .*; vgg_weights") as err:
        TrainConfig().check_weights()
    assert isinstance(err.value, FileNotFoundError) and "allow_random_weights: true" in str(err.value)
    weights = _all_weights(tmp_path)
    TrainConfig(**weights).check_weights()  # every file there: nothing raised
    with pytest.raises(MissingWeights, match=r"emap: .*gone\.npy does not exist or is not a file"):
        TrainConfig(**{**weights, "emap": str(tmp_path / "gone.npy")}).check_weights()
    with pytest.raises(MissingWeights, match="vgg_weights: .* is not a file"):
        TrainConfig(**{**weights, "vgg_weights": str(tmp_path)}).check_weights()  # a folder
    # random weights allowed: what is missing is fine, but a path that is given must still exist
    TrainConfig(allow_random_weights=True).check_weights()
    with pytest.raises(MissingWeights, match="id_weights: .* does not exist"):
        TrainConfig(allow_random_weights=True, id_weights=str(tmp_path / "nope.pth")).check_weights()
    TrainConfig(**{**weights, "emap": None}, use_emap=False).check_weights()


def test_data_that_is_missing_or_not_captioned_is_named_as_such(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"dataset {tmp_path / 'nope'} does not exist"):
        TrainConfig(data=(str(tmp_path / "nope"),)).with_dataset_clip()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"not a captioned dataset \(no plan\.json\).*pipeline\.caption"):
        TrainConfig(data=(str(photos),)).with_dataset_clip()


def test_a_clip_model_alone_takes_its_pretrained_tag_from_the_data(tmp_path, train_data, train_clip):
    data = _copy(train_data, tmp_path / "vgg")
    write_clip_record(DatasetDir(data), "ViT-B-32__openai", "ViT-B-32", "openai")  # a second CLIP's record
    cfg = load_config(None, [f"clip_model={CLIP_NAME}"], data=(str(data),))  # no clip_pretrained
    resolved = cfg.with_dataset_clip()
    assert resolved.clip_pretrained == "none" and clip_tag(resolved.clip_model, "none") == TAG
    assert load_config(None, ["clip_model=ViT-B-32"], data=(str(data),)).with_dataset_clip().clip_pretrained == (
        "openai"
    )
    with pytest.raises(ValueError, match=r"clip_model ViT-L-14 \(clip_pretrained auto\) found no CLIP tag"):
        load_config(None, ["clip_model=ViT-L-14"], data=(str(data),)).with_dataset_clip()


def test_nested_keys_get_a_suggestion_and_presets_load_by_name(monkeypatch):
    with pytest.raises(
        ValueError, match=r"unknown field\(s\) \['adv_strat_step'\] \(did you mean 'adv_start_step'\?\)"
    ):
        load_config(None, ["loss.adv_strat_step=0"])
    by_path = load_config(REPO / "training" / "configs" / "alphaface-fast.yaml")
    assert load_config("alphaface-fast.yaml") == by_path == load_config("alphaface-fast")
    monkeypatch.chdir(REPO)  # where a folder named demo/ sits beside the preset's name
    assert load_config("demo") == load_config(REPO / "training" / "configs" / "demo.yaml")
    with pytest.raises(FileNotFoundError, match=r"the presets: alphaface, alphaface-fast, alphaface-improved, "):
        load_config("alphafase.yaml")

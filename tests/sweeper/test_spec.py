"""Sweep specs: every shipped spec validates and plans; overrides; one-line errors naming the key."""

import copy
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest

from model import DECODER_PRESETS, ENCODER_PRESETS, DecoderConfig, EncoderConfig, LossConfig, PhaseConfig
from model.data import DataConfig
from sweeper.plan import build_plan
from sweeper.spec import SpecError, load_spec, parse_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))


def test_specs_exist():
    names = {p.name for p in SPECS}
    assert {"paper_capacity.yaml", "paper_layers.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_validates_and_plans(path):
    spec = load_spec(path)
    plan = build_plan(spec)
    assert plan.units, "a spec with nothing to run"
    assert len({u.unit_id for u in plan.units}) == len(plan.units)
    assert all(u.params >= 0 and u.seconds >= 0 for u in plan.units)


def test_overrides_replace_values(write_spec, tiny_raw):
    path = write_spec(tiny_raw)
    spec = load_spec(path, ["phase2.lr=3e-4", "grid.seeds=[0,1]", "phase3.steps=5", "grid.seeds=[2, 3]"])
    assert spec.phase2.lr == 3e-4 and isinstance(spec.phase2.lr, float)
    assert spec.grid.seeds == [2, 3]  # later overrides win
    assert spec.phase3 is not None and spec.phase3.steps == 5  # a missing block is created
    assert load_spec(path).phase2.lr == 1e-3  # the file itself is untouched


def test_exponent_floats_are_numbers(write_spec):
    # YAML 1.1 reads `3e-4` as a string; categorical choices would then reach Optuna as text.
    path = write_spec("""
name: t
phase1: {steps: 10, lr: 3e-4}
phase2: {steps: 10}
grid: {expert_hidden: [2]}
eval: {n_images: 16}
data: {num_val: 32}
search:
  params:
    lr: {type: categorical, choices: [1e-4, 3E-4, 1.5e+1]}
""")
    spec = load_spec(path, ["phase2.lr=2e-3"])
    assert spec.search.params["lr"].choices == [1e-4, 3e-4, 15.0]
    assert spec.phase1.lr == 3e-4 and spec.phase2.lr == 2e-3


def _set(path: str, value):
    def mutate(raw):
        *parents, key = path.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    return mutate


def _delete(key):
    return lambda raw: raw.pop(key)


BAD = [
    # (id, mutation of the tiny spec, overrides, words the message must hold)
    ("unknown-key", _set("phase2.stepz", 5), [], ["phase2.stepz", "unknown key"]),
    ("unknown-top-key", _set("gird", {"expert_hidden": [2]}), [], ["gird", "unknown key"]),
    ("wrong-type", _set("phase2.steps", "many"), [], ["phase2.steps", "integer"]),
    ("zero-width", _set("grid.expert_hidden", [0, 8]), [], ["grid.expert_hidden", "positive"]),
    ("negative-width", _set("grid.expert_hidden", [-4]), [], ["grid.expert_hidden", "positive"]),
    ("empty-grid", _set("grid.expert_hidden", []), [], ["grid.expert_hidden", "at least 1"]),
    ("duplicate-widths", _set("grid.expert_hidden", [8, 2, 8]), [], ["grid.expert_hidden", "duplicate"]),
    ("duplicate-seeds", _set("grid.seeds", [0, 0]), [], ["grid.seeds", "duplicate"]),
    ("unknown-encoder", _set("encoder.preset", "dinov2-bb"), [],
     ["encoder.preset", "'dinov2-bb'", "did you mean 'dinov2-b'"]),
    ("unknown-decoder", _set("decoder.preset", "bse"), [], ["decoder.preset", "did you mean 'base'"]),
    ("n-images-over-val", _set("eval.n_images", 64), [], ["eval.n_images (64) exceeds data.num_val (32)"]),
    ("missing-phase", _delete("phase1"), [], ["phase1", "missing"]),
    ("no-loss", _set("phase2.loss", {"l1": 0}), [], ["phase2.loss", "every loss weight is 0"]),
    ("bad-name", _set("name", "my sweep"), [], ["name"]),
    ("bad-search-param", _set("search", {"params": {"depth": {"type": "int", "low": 1, "high": 4}}}), [],
     ["search.params", "cannot search 'depth'"]),
    ("override-bad-value", None, ["phase2.lr=-1"], ["phase2.lr", "greater than 0"]),
    ("override-unknown-key", None, ["trial.lr=3e-4"], ["trial", "unknown key"]),
    ("override-wrong-type", None, ["grid.seeds=zero"], ["grid.seeds", "list"]),
    ("override-no-equals", None, ["phase2.lr"], ["'phase2.lr'", "KEY=VALUE", "override"]),
    ("override-bad-key", None, ["phase2..lr=1"], ["phase2..lr", "not a dotted key", "override"]),
    ("override-into-scalar", None, ["phase2.steps.x=1"], ["phase2.steps.x", "'steps' is not a mapping", "override"]),
    ("override-bad-yaml", None, ["grid.seeds=[0,1"], ["grid.seeds", "cannot parse", "override"]),
]


@pytest.mark.parametrize("mutate, overrides, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_is_one_line_naming_the_key(write_spec, tiny_raw, mutate, overrides, words):
    if mutate is not None:
        mutate(tiny_raw)
    path = write_spec(tiny_raw)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    if "override" in words:  # a malformed override is named by itself
        assert message.startswith("override ")
    else:  # anything else by the file, then the key
        assert message.startswith(f"{path}: ")


@pytest.mark.parametrize("text, words", [
    ("name: [unclosed\n", ["not valid YAML", "line"]),
    ("- a\n- b\n", ["expected a YAML mapping at the top level"]),
    ("just a string\n", ["expected a YAML mapping at the top level"]),
    ("", ["missing"]),
], ids=["unreadable-yaml", "list-top-level", "scalar-top-level", "empty-file"])
def test_bad_file_is_one_line(write_spec, text, words):
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    for word in words:
        assert word in str(info.value)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path)  # a directory


@pytest.mark.parametrize("change, words", [
    (_set("grid.fused_layers", [3, 7]), ["grid.fused_layers", "7 layers", "6 blocks"]),
    (_set("encoder", {"preset": None, "name": "vit_bse_patch16_224"}),
     ["encoder.name", "vit_bse_patch16_224", "did you mean vit_base_patch16_224"]),
    (_set("data.resolution", 36), ["data.resolution", "36"]),
], ids=["too-many-layers", "unknown-timm-model", "resolution-off-grid"])
def test_what_only_the_model_knows_fails_in_build_plan(write_spec, tiny_raw, change, words):
    change(tiny_raw)
    spec = load_spec(write_spec(tiny_raw))  # the file itself is well-formed
    with pytest.raises(SpecError) as info:
        build_plan(spec)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


# --- the model's configs as spec sections ------------------------------------------------------

SECTIONS = [  # (section, its model config, fields the sweep sets itself, keys of the section's own)
    ("encoder", EncoderConfig, {"layers"}, {"preset"}),
    ("decoder", DecoderConfig, set(), {"preset"}),
    ("data", DataConfig, set(), set()),
    ("phase2", PhaseConfig, {"seed"}, set()),
    ("phase2.loss", LossConfig, set(), set()),
]


def _resolved(spec, section: str):
    node = spec
    for part in section.split("."):
        node = getattr(node, part)
    return getattr(node, "config", node)  # a preset section holds its resolved config


def _plain(value):
    """A config field's value as YAML would give it."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("section, cls, owned, own", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_a_section_takes_exactly_its_model_configs_fields(write_spec, tiny_raw, section, cls, owned, own):
    if "preset" in own:  # explicit: a timm name alone would start from EncoderConfig's defaults instead
        _set(f"{section}.preset", "tiny")(tiny_raw)
    resolved = _resolved(parse_spec(tiny_raw), section)
    assert isinstance(resolved, cls)
    for field in dataclasses.fields(cls):
        raw = copy.deepcopy(tiny_raw)
        _set(f"{section}.{field.name}", _plain(getattr(resolved, field.name)))(raw)
        if field.name in owned:  # set by the sweep from a key of its own: an error that says where
            with pytest.raises(SpecError, match=rf"^{write_spec(raw)}: {section}\.{field.name}: set by the sweep \("):
                load_spec(write_spec(raw))
        else:
            assert _resolved(parse_spec(raw), section) == resolved, field.name
    # ... and no other key: the hint lists exactly the config's fields and the section's own keys
    _set(f"{section}.zzz", 1)(tiny_raw)
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tiny_raw))
    listed = str(info.value).split(f"{section}.zzz: unknown key; expected one of ")[1].split(", ")
    assert set(listed) == {f.name for f in dataclasses.fields(cls)} | own


def test_a_section_value_reaches_the_plans_config(tiny_raw):
    tiny_raw.update(seed=7, phase2={"steps": 10, "val_batch_size": 64, "min_lr_ratio": 0.5},
                    decoder={"preset": "small", "depth": 2}, encoder={"pretrain_steps": 9, "mean": [0.1, 0.2, 0.3]})
    plan = build_plan(parse_spec(tiny_raw))
    assert plan.phase2.val_batch_size == 64 and plan.phase2.min_lr_ratio == 0.5 and plan.phase2.seed == 0
    assert plan.phase1.seed == 7  # the sweep's seed; phases 2-3 take each unit's seed in its trial
    assert plan.decoder == replace(DECODER_PRESETS["small"], depth=2)
    assert plan.encoder == replace(ENCODER_PRESETS["tiny"], pretrain_steps=9, mean=(0.1, 0.2, 0.3))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_specs_dump_reads_back_as_the_same_spec(path):
    # the dump is what the sweep's MLflow run records as its params: resolved, and enough to rerun it
    spec = load_spec(path)
    dumped = spec.model_dump(mode="json")
    assert parse_spec(dumped) == spec
    assert dumped["encoder"]["preset"] == spec.encoder.preset and "layers" not in dumped["encoder"]
    assert "seed" not in dumped["phase1"] and dumped["phase1"]["val_batch_size"] == spec.phase1.val_batch_size

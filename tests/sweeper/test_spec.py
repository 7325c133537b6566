"""Sweep specs: every shipped spec validates and plans; overrides; one-line errors naming the key."""

import copy
import dataclasses
import math
import os
import time
import tracemalloc
import types
import typing
from dataclasses import replace
from pathlib import Path

import pydantic
import pytest
import yaml

from model import DECODER_PRESETS, ENCODER_PRESETS, DecoderConfig, EncoderConfig, FusionConfig, LossConfig, PhaseConfig
from model.data import DataConfig
from model.errors import ConfigError
from sweeper.plan import build_plan
from sweeper.spec import (
    MAX_SPEC_BYTES,
    MAX_UNITS,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    SEARCHABLE,
    SpecError,
    SweepSpec,
    load_spec,
    parse_spec,
)

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
    ("description: !!set x\n", ["not valid YAML at line 1, column 14: expected a mapping node, but found scalar"]),
], ids=["unreadable-yaml", "list-top-level", "scalar-top-level", "empty-file", "tag-of-another-kind"])
def test_bad_file_is_one_line(write_spec, text, words):
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    for word in words:
        assert word in str(info.value)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(SpecError, match=r"no such file or directory \(expected a spec file\)"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"a directory, not a regular file \(expected a spec file\)"):
        load_spec(tmp_path)


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



# --- hostile input: nothing a spec or an override says can hang the tool or exhaust its memory ---


def yaml_text(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


def _refused(path, overrides=(), seconds: float = 5.0, megabytes: float = 50.0) -> str:
    """load_spec's (or build_plan's) one-line SpecError for ``path``, checked to come fast and in little memory."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            build_plan(load_spec(path, list(overrides)))
    finally:
        elapsed, (_, peak) = time.perf_counter() - t, tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds and peak < megabytes * 1e6, (elapsed, peak)
    assert "\n" not in str(info.value)
    return str(info.value)


LAUGHS = "laughs:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_a_billion_laughs_is_refused_at_once(write_spec, tiny_raw):
    # 1.2 KB that stand for 9^9 values: PyYAML shares an alias's node, but validating walks it as a tree
    text = yaml_text(tiny_raw) + LAUGHS
    assert len(text) < 1300
    path = write_spec(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "&e [" in x)) + 1  # 9^5 > 20000
    assert _refused(path, seconds=1) == (f"{path}: line {line}, column 13: more than "
                                         f"{MAX_YAML_VALUES} values (each alias counted as the values it stands "
                                         "for); expected a spec far smaller")
    value = "[&a [x,x,x,x,x,x,x,x,x]," + ",".join(f"&{c} [{','.join([f'*{p}'] * 9)}]"
                                                  for p, c in zip("abcdefg", "bcdefgh"))
    assert len(value) < 250
    message = _refused(write_spec(tiny_raw), [f"description={value}]"], seconds=1)
    assert message.startswith("override description: column ") and f"more than {MAX_YAML_VALUES} values" in message


def test_aliases_within_the_bound_still_work(write_spec, tiny_raw):
    text = yaml_text(tiny_raw).replace("phase1:\n  steps: 10", "phase1: &p\n  steps: 10") + "phase3: *p\n"
    assert load_spec(write_spec(text)).phase3.steps == 10


def test_an_alias_inside_its_own_value_is_refused(write_spec, tiny_raw):
    path = write_spec(yaml_text(tiny_raw) + "description: &d [a, *d]\n")
    assert "alias *d inside the value it refers to (a recursive alias)" in _refused(path)


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 3000, 100_000])
def test_deep_nesting_is_refused_with_its_line(write_spec, tiny_raw, depth):
    path = write_spec(yaml_text(tiny_raw) + "description: " + "[" * depth + "]" * depth + "\n")
    assert _refused(path).endswith(f", column {14 + MAX_YAML_DEPTH - 1}: nested more than {MAX_YAML_DEPTH} levels deep")
    message = _refused(write_spec(tiny_raw, "fine.yaml"), ["description=" + "{a: " * depth + "}" * depth])
    assert message.startswith("override description: column ") and "nested more than" in message
    tiny_raw["description"] = "[" * (MAX_YAML_DEPTH - 3) + "]" * (MAX_YAML_DEPTH - 3)  # within the bound: a string
    assert load_spec(write_spec(yaml_text(tiny_raw))).description.startswith("[[")


def test_too_many_values_are_refused_before_they_are_all_read(write_spec, tiny_raw):
    items = ", ".join(["1"] * 300_000)  # 900 kB: about 26 s for PyYAML to read whole
    message = _refused(write_spec(yaml_text(tiny_raw) + f"description: [{items}]\n"), seconds=10)
    assert f"more than {MAX_YAML_VALUES} values" in message


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "symlink-loop", "over-1-MB"])
def test_a_spec_path_that_is_not_a_small_regular_file_is_one_line(tmp_path, tiny_raw, kind):
    path = {"directory": tmp_path, "device": Path("/dev/zero"), "fifo": tmp_path / "fifo",
            "symlink-loop": tmp_path / "loop", "over-1-MB": tmp_path / "big.yaml"}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # no writer: reading it would wait forever
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "over-1-MB":
        path.write_text(yaml_text(tiny_raw) + "#" * MAX_SPEC_BYTES + "\n")
    words = {"directory": "a directory, not a regular file", "device": "a character device, not a regular file",
             "fifo": "a named pipe (FIFO), not a regular file", "symlink-loop": "a symbolic link loop",
             "over-1-MB": "over the 1,000,000 bytes a file may have here"}[kind]
    message = _refused(path, seconds=1)
    assert message.startswith(f"{path}: ") and words in message and message.endswith("(expected a spec file)")


@pytest.mark.parametrize("literal", ["9" * 5000, "1" + "0" * 400, str(2**63), str(-(2**63) - 1), "0x" + "f" * 17])
def test_an_integer_beyond_64_bits_is_refused_with_its_place(write_spec, tiny_raw, literal):
    text = yaml_text(tiny_raw)
    path = write_spec(text + f"seed: {literal}\n")
    message = _refused(path)
    assert message.startswith(f"{path}: line {text.count(chr(10)) + 1}, column 7: integer ")
    assert "is out of range; expected a 64-bit" in message
    assert len(message) < 300
    message = _refused(write_spec(text, "fine.yaml"), [f"grid.expert_hidden=[2, {literal}]"])
    assert message.startswith("override grid.expert_hidden: column 5: integer ") and "out of range" in message


def test_a_64_bit_width_plans_with_a_finite_cost(tiny_raw):
    tiny_raw["grid"]["expert_hidden"] = [2, 2**63 - 1]  # far beyond any machine, but an int the cost estimate takes
    plan = build_plan(parse_spec(tiny_raw))
    assert all(math.isfinite(u.gflop) and math.isfinite(u.seconds) for u in plan.units)


@pytest.mark.parametrize("value, words", [
    ("2026-13-45", "cannot read '2026-13-45' as timestamp (month must be in 1..12)"),
    ("!!float abc", "cannot read 'abc' as float"),
    ("!!int 1.5", "cannot read '1.5' as int"),
    ("!!timestamp noon", "cannot read 'noon' as timestamp"),
])
def test_a_value_its_tag_cannot_make_is_refused_with_its_place(write_spec, tiny_raw, value, words):
    text = yaml_text(tiny_raw)
    path = write_spec(text + f"description: {value}\n")
    assert _refused(path).startswith(f"{path}: line {text.count(chr(10)) + 1}, column 14: {words}")


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x9b"])
def test_a_control_character_in_a_spec_is_refused_with_its_line_and_column(write_spec, tiny_raw, char):
    text = yaml_text(tiny_raw)
    path = write_spec(text + f"description: a{char}b\n")
    assert _refused(path) == (f"{path}: not valid YAML at line {text.count(chr(10)) + 1}, column 15: control character "
                              f"U+{ord(char):04X} is not allowed (expected printable text)")
    message = _refused(write_spec(text, "fine.yaml"), [f"description=x{char}"])
    assert message.startswith("override description: cannot parse value ")
    assert "at column 2: control character" in message


# --- numbers: booleans are not numbers, floats are finite (every field of every section) --------

# The tiny spec with every optional section present, so that each of their fields can be set alone.
FULL = {"phase3": {"steps": 10}, "search": {"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
        "resources": {"gpu": 1}, "controls": {"runs": ["last_layer"]}, "stop": {"target": 1e8, "pi_width_below": 2.0}}


def _leaves(cls, prefix: str):
    """(dotted key, shape) of every number in a spec section: shape names where the number sits."""
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        fields = dict(cls.model_fields)
        if "config" in fields and hasattr(cls, "PRESETS"):  # a preset section: the model config's fields, flat
            owned = cls.OWNED
            config = fields["config"].annotation
            yield from (leaf for name, f in config.__pydantic_fields__.items() if name not in owned
                        for leaf in _field_leaves(f.annotation, f"{prefix}{name}"))
            return
    elif dataclasses.is_dataclass(cls):
        fields = cls.__pydantic_fields__
    else:
        return
    for name, f in fields.items():
        if (cls, name) in ((PhaseConfig, "seed"),):  # set by the sweep: a spec may not set it at all
            continue
        yield from _field_leaves(f.annotation, f"{prefix}{name}")


def _field_leaves(tp, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        yield from _field_leaves(args[0], key)
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            yield from _field_leaves(a, key)
    elif tp in (int, float):
        yield key, tp.__name__
    elif origin is list and _is_number(args[0]):
        yield key, f"list[{_number(args[0])}]"
    elif origin is tuple and _is_number(args[0]):
        yield key, f"tuple[{_number(args[0])}]x{len(args)}"
    elif origin is dict and _is_number(args[0]):
        yield key, f"dict-key[{_number(args[0])}]"
        if _is_number(args[1]):
            yield key, f"dict-value[{_number(args[1])}]"
    elif origin is dict and args[0] is str and isinstance(args[1], type) and issubclass(args[1], pydantic.BaseModel):
        yield from _leaves(args[1], f"{key}.lr.")  # search.params: the searched value FULL names
    elif isinstance(tp, type) and (dataclasses.is_dataclass(tp) or issubclass(tp, pydantic.BaseModel)):
        yield from _leaves(tp, f"{key}.")


def _number(tp):
    return _number(typing.get_args(tp)[0]) if typing.get_origin(tp) is typing.Annotated else tp.__name__


def _is_number(tp) -> bool:
    return typing.get_origin(tp) is typing.Annotated and _is_number(typing.get_args(tp)[0]) or tp in (int, float)


def _put(shape: str, bad):
    """A value of ``shape`` with ``bad`` where the number goes."""
    if shape in ("int", "float"):
        return bad
    if shape.startswith("list["):
        return [bad]
    if shape.startswith("tuple["):
        return [bad] + [0.5] * (int(shape.rsplit("x", 1)[1]) - 1)
    if shape.startswith("dict-key["):
        return {bad: 0.5}
    return {2: bad}


LEAVES = sorted(set(_leaves(SweepSpec, "")))


def test_the_walk_finds_the_numbers_of_every_section():
    keys = {k for k, _ in LEAVES}
    assert {"seed", "beta_max", "grid.expert_hidden", "grid.seeds", "grid.fused_layers", "resources.max_concurrent",
            "resources.gpu_share", "resources.cpu", "eval.n_images", "encoder.input_size", "encoder.mean",
            "decoder.depth", "decoder.mlp_ratio", "data.num_val", "phase1.batch_size", "phase2.lr",
            "phase2.loss.adv_start_step", "phase3.warmup_steps", "search.n_trials", "search.params.lr.low",
            "controls.last_layer_hidden", "feature_cache.max_gb", "law.target", "stop.pi_width_below",
            "stop.min_points"} <= keys
    assert "phase2.seed" not in keys and "encoder.layers" not in keys  # the sweep's own


@pytest.mark.parametrize("key, shape", LEAVES, ids=[f"{k}:{s}" for k, s in LEAVES])
def test_no_number_of_a_spec_is_a_boolean_a_string_or_infinite(tiny_raw, key, shape):
    raw = {**tiny_raw, **copy.deepcopy(FULL)}
    parse_spec(raw)  # fine as it is: what follows fails for the value alone
    bads = [(True, "got a boolean (True)"), (False, "got a boolean (False)"), ("2", "got a string '2'")]
    if shape.endswith("[int]") or shape == "int":
        bads += [(2.0, "expected a valid integer, got a number 2.0"), (2**63, "got a number 9223372036854775808")]
    else:
        bads += [(math.inf, "expected a finite number"), (-math.inf, "expected a finite number"),
                 (math.nan, "expected a finite number")]
    for bad, words in bads:
        if shape.startswith("dict-key") and not isinstance(bad, bool):
            continue  # gpu_share reads '128' as the width 128 (JSON's keys are strings: the spec's dump)
        spec = copy.deepcopy(raw)
        _set(key, _put(shape, bad))(spec)
        with pytest.raises(SpecError) as info:
            parse_spec(spec, "s.yaml")
        assert str(info.value).startswith(f"s.yaml: {key}") and words in str(info.value), (bad, str(info.value))


@pytest.mark.parametrize("seed, ok", [(0, True), (2**32 - 1, True), (-1, False), (2**32, False)])
def test_seeds_are_what_torch_numpy_and_optuna_accept(tiny_raw, seed, ok):
    import numpy as np
    import torch

    for key, value in (("seed", seed), ("grid.seeds", [seed])):
        spec = copy.deepcopy(tiny_raw)
        _set(key, value)(spec)
        if ok:
            parse_spec(spec)
            torch.Generator().manual_seed(seed)
            np.random.RandomState(seed)  # Optuna's samplers' seed
        else:
            with pytest.raises(SpecError, match=rf"^<spec>: {key}(\.0)?: expected a number (greater|less) than or "):
                parse_spec(spec)


def test_a_sweep_of_more_than_10000_units_is_refused_with_the_count_at_once(tiny_raw):
    tiny_raw["grid"] = {"expert_hidden": list(range(1, 101)), "seeds": list(range(100))}
    assert len(build_plan(parse_spec(tiny_raw)).units) == MAX_UNITS  # the bound itself plans
    tiny_raw["controls"] = {"runs": ["rae"]}
    t = time.perf_counter()
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_raw)
    assert time.perf_counter() - t < 1
    assert str(info.value) == (f"<spec>: grid: {MAX_UNITS + 1} units (100 widths x 100 seeds + 1 controls); "
                               f"expected at most {MAX_UNITS}: split the sweep into several")


def test_json_string_keys_of_gpu_share_read_back_as_widths(tiny_raw):
    tiny_raw["resources"] = {"gpu": 1, "gpu_share": {2: 0.25, 8: 0.5}}
    spec = parse_spec(tiny_raw)
    dumped = spec.model_dump(mode="json")
    assert dumped["resources"]["gpu_share"] == {"2": 0.25, "8": 0.5}
    assert parse_spec(dumped) == spec


# --- what the model and the search accept ---------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"patch_size": 0}, "(ZeroDivisionError: integer division or modulo by zero)"),
    ({"mlp_ratio": -1}, "(RuntimeError: Trying to create tensor with negative dimension"),
    ({"depht": 4}, "(TypeError:"),
    ({"embed_dim": 2**16, "num_heads": 1, "reg_tokens": 2**16, "depth": 2}, None),  # plans: on the meta device
    ({"depth": 0}, "has no blocks; expected a ViT of at least one block"),
    ({"depth": 200}, "the model has more than 2500 modules"),
])
def test_model_kwargs_the_model_rejects_are_one_line_naming_encoder_model_kwargs(tiny_raw, kwargs, words):
    tiny_raw["encoder"] = {"preset": "tiny", "model_kwargs": {**ENCODER_PRESETS["tiny"].model_kwargs, **kwargs}}
    spec = parse_spec(tiny_raw)
    if words is None:
        build_plan(spec)
        return
    t = time.perf_counter()
    with pytest.raises(SpecError) as info:
        build_plan(spec)
    assert time.perf_counter() - t < 5
    assert str(info.value).startswith("encoder.model_kwargs: ") and words in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and "Exception raised from" not in str(info.value)


@pytest.mark.parametrize("key, value, words", [
    ("checkpoint_path", "/dev/zero", "not an argument of the model's architecture; the weights are encoder.weights"),
    ("pretrained", True, "not an argument of the model's architecture"),
    ("device", "cpu", "not an argument of the model's architecture; the sweep places the model"),
    ("img_size", 64, "set encoder.input_size"),
    ("depth", 10**6, "1000000 is out of range for a size of the architecture"),
    ("depths", [2, 2, 10**7], "10000000 is out of range"),
    ("init_values", float("nan"), "nan is out of range"),
])
def test_model_kwargs_that_are_not_sizes_of_the_architecture_are_refused_in_the_spec(tiny_raw, key, value, words):
    tiny_raw["encoder"] = {"preset": "tiny", "model_kwargs": {key: value}}
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_raw)
    assert str(info.value).startswith(f"<spec>: encoder.model_kwargs.{key}: ") and words in str(info.value)


def test_a_decoder_too_large_to_plan_is_refused_at_once(tiny_raw):
    for change, words in (({"depth": 10**6}, "decoder: the model has more than 2500 modules"),
                          ({"dim": 2**40, "num_heads": 1}, "decoder: cannot build a decoder of dim 1099511627776")):
        tiny_raw["decoder"] = {"preset": "tiny", **change}
        t = time.perf_counter()
        with pytest.raises(SpecError) as info:
            build_plan(parse_spec(tiny_raw))
        assert time.perf_counter() - t < 5 and str(info.value).startswith(words), str(info.value)


def _phase_takes(name: str, value) -> bool:
    """Whether phase 2 (or the fusion, for beta_max) accepts ``value`` for ``name``: the model's own check."""
    try:
        if name == "beta_max":
            FusionConfig(dim=8, num_layers=1, hidden=1, beta_max=value)
        else:
            PhaseConfig(steps=10, **{name: value})
        return True
    except ConfigError:
        return False


SAMPLES = [-1, 0, 1, 3, 64, 0.5, 1e-3, True, math.inf, math.nan, "1"]


@pytest.mark.parametrize("name", SEARCHABLE)
def test_a_search_is_accepted_exactly_when_every_value_it_draws_is_one_the_phase_takes(tiny_raw, name):
    for value in SAMPLES:  # a categorical draws its choices as they are
        raw = {**copy.deepcopy(tiny_raw), "search": {"params": {name: {"type": "categorical", "choices": [value]}}}}
        if _phase_takes(name, value):
            assert parse_spec(raw).search.params[name].choices == [value]
        else:
            with pytest.raises(SpecError, match=rf"^<spec>: search\.params\.{name}\.choices\.0: "):
                parse_spec(raw)
    integer = not _phase_takes(name, 0.5) and _phase_takes(name, 1)
    for low, high in [(-1, 1), (0, 1), (1, 3), (1e-3, 1), (1, 64)]:  # a range draws anything from low to high
        for kind in ("uniform", "loguniform", "int"):
            raw = {**copy.deepcopy(tiny_raw), "search": {"params": {name: {"type": kind, "low": low, "high": high}}}}
            draws = (range(int(low), int(high) + 1) if kind == "int" and float(low).is_integer()
                     else [low, (low + high) / 2, high])
            ok = (kind == "int" or not integer) and all(_phase_takes(name, v) for v in draws)
            ok = ok and not (kind == "int" and not float(low).is_integer()) and not (kind == "loguniform" and low <= 0)
            if ok:
                parse_spec(raw)
            else:
                with pytest.raises(SpecError, match=rf"^<spec>: search\.params(\.{name})?"):
                    parse_spec(raw)


def test_faults_must_name_units_of_the_sweep(tiny_raw):
    tiny_raw["faults"] = {"oom": ["h8-k6-s0"]}
    build_plan(parse_spec(tiny_raw))
    tiny_raw["faults"] = {"oom": ["h8-k6-s0"], "nan_loss": ["h9-k6-s0"]}
    with pytest.raises(SpecError, match=r"^faults\.nan_loss: no unit 'h9-k6-s0' in this sweep \(did you mean"):
        build_plan(parse_spec(tiny_raw))


def test_a_control_listed_twice_is_named_as_a_duplicate(tiny_raw):
    tiny_raw["controls"] = {"runs": ["rae", "decoder_only", "rae"]}
    with pytest.raises(SpecError, match=r"^<spec>: controls\.runs: duplicate control 'rae' in \['rae', 'decoder_only', "
                                        r"'rae'\]; each control must be listed once$"):
        parse_spec(tiny_raw)


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_an_infinite_lr_names_its_phase(write_spec, tiny_raw, phase):
    path = write_spec(tiny_raw)
    with pytest.raises(SpecError, match=rf"^{path}: {phase}\.lr: expected a finite number, got a number inf$"):
        load_spec(path, [f"{phase}.steps=5", f"{phase}.lr=.inf"])


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("a/b", "got 'a/b'"), ("..", "got '..'"), (".hidden", "starting with a letter or digit"),
    ("a\\b", "got 'a\\\\b'"), ("a\tb", "got 'a\\tb'"), ("a\x00b", "got 'a\\x00b'"), ("a\x1b[2J", "got 'a\\x1b[2J'"),
    ("", "got ''"), ("n" * 101, "101 characters; expected at most 100"),
    ("mlflow.db", "is a file of results_dir"), ("MLflow.DB", "is a file of results_dir"),
    ("mlflow.db-wal", "is a file of results_dir"), ("x.before-restart-20261203-120000", "how --restart names"),
])
def test_a_name_that_cannot_name_a_directory_of_its_own_is_refused(tiny_raw, name, words):
    tiny_raw["name"] = name
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_raw)
    assert str(info.value).startswith("<spec>: name: ") and words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_names_up_to_the_bound_are_fine(tiny_raw):
    for name in ("n" * 100, "a.b-c_d", "9", "smoke.before"):
        assert parse_spec({**tiny_raw, "name": name}).name == name


def test_no_sweep_name_is_what_the_sweep_writes_beside_the_sweeps(tmp_path, tiny_raw):
    # results_dir holds the sweeps' directories, and beside them what these write: each must be refused as a name
    from urllib.parse import urlparse

    from sweeper.experiment import tracking_uri
    from sweeper.lock import lock_path
    from sweeper.run import _archive

    spec = parse_spec({**tiny_raw, "results_dir": str(tmp_path)})
    (tmp_path / spec.name).mkdir()
    beside = {Path(urlparse(tracking_uri(spec)).path).name, lock_path(tmp_path, spec.name).name,
              _archive(tmp_path / spec.name).name}
    for name in beside:
        with pytest.raises(SpecError, match=r"^<spec>: name: "):
            parse_spec({**tiny_raw, "name": name})


@pytest.mark.parametrize("key", ["results_dir", "storage_path", "cache_dir", "tracking.uri", "tracking.experiment",
                                 "data.root", "encoder.checkpoint"])
def test_a_path_or_name_with_a_control_character_is_refused(tiny_raw, key):
    _set(key, "a\x00b")(tiny_raw)
    with pytest.raises(SpecError, match=rf"^<spec>: {key}: control character U\+0000 in 'a\\x00b'; expected printable"):
        parse_spec(tiny_raw)


def test_a_key_with_a_terminal_escape_is_named_escaped(write_spec, tiny_raw):
    path = write_spec(yaml_text(tiny_raw) + '"\\e[2J\\e]0;pwned\\a": 1\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: \\x1b[2J\\x1b]0;pwned\\x07: unknown key")

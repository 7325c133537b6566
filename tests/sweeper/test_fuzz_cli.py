"""Fuzzing `drorae sweep --dry-run` with mutated specs and overrides (Hypothesis).

Each example takes one of the shipped specs (sweeps/*.yaml), mutates it (a value replaced by one of
another type, size or sign, a key dropped or added, deep nesting, aliases, control characters and
other unicode, raw bytes spliced into the YAML text) and adds random overrides, then runs the real
command line on it. Whatever the input: exit 0 or 2, never a traceback, at most 3 lines on stderr,
done within 10 s and 1 GB, and nothing written (a dry run writes nothing, a refused run neither).

Time-boxed: `make test` runs it for DRORAE_FUZZ_SECONDS (60) with a fixed seed, so CI is
reproducible; `make fuzz` runs it longer on fresh random examples (DRORAE_FUZZ_SECONDS=600,
DRORAE_FUZZ_RANDOM=1). Commands run in the bad-input suite's warm interpreter (a fork per command).
"""

import os
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import NO_RAY, REPO, WarmDrorae

SPECS = sorted((REPO / "sweeps").glob("*.yaml"))
BUDGET_S = float(os.environ.get("DRORAE_FUZZ_SECONDS", "60"))
RANDOM = bool(os.environ.get("DRORAE_FUZZ_RANDOM"))
COMMAND_S = 10  # each command's limit
MEMORY_KB = 1 << 20  # 1 GiB above the warm interpreter's own

pytestmark = pytest.mark.slow

# --- what a hostile user types ------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, -1, 1, 2**31, 2**63, -2**63 - 1, 10**400, 10**4000]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-300, -0.0, 1e308]),
    _text, st.sampled_from(["", "..", "../x", "a/b", "\x00", "\x1b[2J", "mlflow.db", "x" * 300, "~", "$HOME"]),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.one_of(_text, st.integers()), inner, max_size=3), max_leaves=12)
# Scalars as YAML text: what a spec file or an override may spell that safe_dump never writes.
_yaml_words = st.sampled_from([".inf", "-.inf", ".nan", "1e400", "-1e400", "0x10", "0o17", "1_000", "yes", "~",
                               "null", "true", "[]", "{}", "[1, [2, [3]]]", "*a", "&a 1", "!!python/none ''",
                               "!!binary aGk=", "'" + "9" * 5000 + "'", "9" * 5000, "[" * 3000 + "]" * 3000])


def _paths(tree, prefix=()):
    """Every key path of a nested mapping, sections and leaves."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))


@st.composite
def mutated_spec(draw):
    """(the bytes of a mutated shipped spec, overrides)."""
    base = draw(st.sampled_from(SPECS))
    raw = yaml.safe_load(base.read_text())
    paths = [p for p in _paths(raw) if all(isinstance(k, str) for k in p)]
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths))
        node = raw
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            node[path[-1]] = draw(_values)
        elif action == "drop":
            node.pop(path[-1], None)
        else:
            node[draw(_text)] = draw(_values)
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    edit = draw(st.sampled_from(["none", "splice", "bytes", "word", "nest", "alias"]))
    if edit == "splice":  # raw characters anywhere in the text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=8)) + text[at:]
    elif edit == "bytes":  # bytes that are not UTF-8, or NUL and ESC, anywhere
        at = draw(st.integers(0, len(text)))
        return text.encode()[:at] + draw(st.binary(min_size=1, max_size=4)) + text.encode()[at:], []
    elif edit == "word":  # a value spelled as YAML text
        key = draw(st.sampled_from([p for p in paths if len(p) == 2]))
        text += f"\n{key[0]}:\n  {key[1]}: {draw(_yaml_words)}\n"
    elif edit == "nest":
        text += "x: " + "[" * draw(st.integers(50, 5000)) + "\n"
    elif edit == "alias":  # a document of aliases that expands exponentially
        depth = draw(st.integers(2, 12))
        text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, depth)) + text
    keys = [".".join(p) for p in paths]
    overrides = draw(st.lists(st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(keys), st.one_of(_yaml_words, _text)),
        _text), max_size=3))
    return text.encode(), overrides


# --- the property ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drorae(tmp_path_factory):
    warm = WarmDrorae(tmp_path_factory.mktemp("fuzz-output"))
    yield warm
    warm.close()


def test_any_mutated_spec_or_override_exits_0_or_2_in_one_clear_line_within_10_s_and_1_gb_writing_nothing(
        drorae, tmp_path_factory):
    started = time.monotonic()
    ran = []

    # About as many examples as the time box runs (each takes 0.1-0.3 s): past it they are still drawn.
    @settings(max_examples=int(BUDGET_S * (8 if RANDOM else 5)), deadline=None, derandomize=not RANDOM,
              database=None, suppress_health_check=list(HealthCheck))
    @given(mutated_spec())
    def check(case):
        if time.monotonic() - started > BUDGET_S:
            return  # the time box: the remaining examples are drawn but not run
        text, overrides = case
        tmp = tmp_path_factory.mktemp("case")
        spec = tmp / "spec.yaml"
        spec.write_bytes(text)
        before = sorted(p.name for p in tmp.iterdir())
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(RAY_ADDRESS=NO_RAY, DRORAE_CACHE=str(tmp / "cache"))
        args = ["sweep", str(spec), "--dry-run", f"results_dir={tmp / 'results'}", *overrides]
        t = time.monotonic()
        out = drorae(args, env, timeout=COMMAND_S)  # fails the example past 10 s
        ran.append(time.monotonic() - t)
        assert out.returncode in (0, 2), (args, out.stderr[-2000:])
        assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
        assert len(out.stderr.splitlines()) <= 3, out.stderr[-3000:]
        if out.returncode == 2:
            assert out.stderr.startswith("drorae: error: "), out.stderr
        assert drorae.last["maxrss_kb"] - drorae.server_maxrss_kb < MEMORY_KB, (args, drorae.last)
        assert sorted(p.name for p in tmp.iterdir()) == before, "the command wrote something"

    check()
    assert len(ran) >= 10, f"only {len(ran)} examples ran in {BUDGET_S} s"
    print(f"\n{len(ran)} examples in {time.monotonic() - started:.0f} s, slowest {max(ran):.1f} s")

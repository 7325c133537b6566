"""The shared work of a spec is reproducible from an empty cache: the same encoder, features and phase-1 decoder."""

from pathlib import Path

import pytest
import torch

from sweeper.plan import build_plan
from sweeper.spec import load_spec

SMOKE = Path(__file__).parents[2] / "sweeps" / "smoke.yaml"


def _prepare_in(cache: Path, monkeypatch):
    import sweeper.shared

    monkeypatch.setenv("DRORAE_CACHE", str(cache))
    cache.mkdir()
    for name in ("weights", "datasets"):  # the offline assets where they are; everything else starts empty
        src = Path.home() / ".cache" / "drorae-scaling" / name
        if src.exists():
            (cache / name).symlink_to(src)
    plan = build_plan(load_spec(SMOKE, ["encoder.pretrain_steps=10", "phase1.steps=10", "data.num_train=256"]))
    torch.manual_seed(12345 + len(str(cache)))  # whatever the caller's RNG holds: the shared work seeds itself
    return sweeper.shared.prepare(plan)


@pytest.mark.slow  # the smoke spec's shared work, twice
def test_the_shared_work_is_bit_identical_from_two_empty_caches(tmp_path, monkeypatch):
    a, b = _prepare_in(tmp_path / "a", monkeypatch), _prepare_in(tmp_path / "bb", monkeypatch)
    assert Path(a.decoder_path).name == Path(b.decoder_path).name  # the same key: nothing machine-local in it
    for key in ("encoder_checkpoint", "decoder_path", "features_path"):
        sa = torch.load(getattr(a, key), map_location="cpu", weights_only=True)
        sb = torch.load(getattr(b, key), map_location="cpu", weights_only=True)
        flat_a = sa if key != "features_path" else {f"{s}.{k}": v for s in sa for k, v in sa[s].items()}
        flat_b = sb if key != "features_path" else {f"{s}.{k}": v for s in sb for k, v in sb[s].items()}
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), key
    assert a.phase1["val_l1"] == b.phase1["val_l1"]

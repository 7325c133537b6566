"""Asset lookup order, actionable errors, safe writes, and the converted weights themselves."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch

from model import assets
from model.__main__ import main as model_cli
from model.errors import AssetError, UserError

ENV_VARS = (
    "DRORAE_CACHE", "DRORAE_FID_WEIGHTS", "DRORAE_LPIPS_ALEX_WEIGHTS", "DRORAE_LPIPS_VGG_WEIGHTS",
    "DRORAE_FASHION_MNIST",
)


@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    """A cache root with nothing in it and no asset variables set."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system" / "fashion-mnist")
    return tmp_path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, UserError) and excinfo.value.exit_code == 2
    return msg


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DRORAE_CACHE", raising=False)
    assert assets.cache_root() == Path.home() / ".cache" / "drorae-scaling"
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path))
    assert assets.cache_root() == tmp_path


def test_missing_fid_weights_names_where_it_looked(empty_env):
    with pytest.raises(AssetError) as e:
        assets.fid_inception_weights()
    msg = _one_line_error(e)
    assert str(empty_env / "cache" / "weights" / assets.FID_WEIGHTS_NAME) in msg
    assert "DRORAE_FID_WEIGHTS" in msg and "make install" in msg and "python -m model fetch" in msg


def test_fid_env_var_pointing_at_missing_file_is_an_error(empty_env, monkeypatch):
    _touch(empty_env / "cache" / "weights" / assets.FID_WEIGHTS_NAME)  # a cache hit must not hide the typo
    missing = empty_env / "nowhere" / "fid.pt"
    monkeypatch.setenv("DRORAE_FID_WEIGHTS", str(missing))
    with pytest.raises(AssetError) as e:
        assets.fid_inception_weights()
    msg = _one_line_error(e)
    assert f"DRORAE_FID_WEIGHTS={missing}" in msg


def test_fid_env_var_wins_over_cache(empty_env, monkeypatch):
    cached = _touch(empty_env / "cache" / "weights" / assets.FID_WEIGHTS_NAME)
    assert assets.fid_inception_weights() == cached
    explicit = _touch(empty_env / "mine.pt")
    monkeypatch.setenv("DRORAE_FID_WEIGHTS", str(explicit))
    assert assets.fid_inception_weights() == explicit


@pytest.mark.parametrize("net", assets.LPIPS_NETS)
def test_lpips_lookup(empty_env, monkeypatch, net):
    with pytest.raises(AssetError) as e:
        assets.lpips_weights(net)
    assert str(empty_env / "cache" / "weights" / f"lpips_{net}.pt") in _one_line_error(e)
    cached = _touch(empty_env / "cache" / "weights" / f"lpips_{net}.pt")
    assert assets.lpips_weights(net) == cached
    explicit = _touch(empty_env / f"{net}.pt")
    monkeypatch.setenv(f"DRORAE_LPIPS_{net.upper()}_WEIGHTS", str(explicit))
    assert assets.lpips_weights(net) == explicit


def test_lpips_unknown_net(empty_env):
    with pytest.raises(AssetError, match="squeeze"):
        assets.lpips_weights("squeeze")


def test_fashion_mnist_lookup_order(empty_env, monkeypatch):
    with pytest.raises(AssetError) as e:
        assets.fashion_mnist_dir()
    msg = _one_line_error(e)
    assert str(assets.FASHION_MNIST_SYSTEM_DIR) in msg and "dataset-fashion-mnist" in msg

    def fill(d: Path) -> Path:
        for name in assets.FASHION_MNIST_FILES:
            _touch(d / name)
        return d

    cached = fill(empty_env / "cache" / "datasets" / "fashion-mnist")
    assert assets.fashion_mnist_dir() == cached
    system = fill(assets.FASHION_MNIST_SYSTEM_DIR)
    assert assets.fashion_mnist_dir() == system
    partial = _touch(empty_env / "mine" / assets.FASHION_MNIST_FILES[0]).parent
    monkeypatch.setenv("DRORAE_FASHION_MNIST", str(partial))
    with pytest.raises(AssetError, match="DRORAE_FASHION_MNIST"):
        assets.fashion_mnist_dir()
    fill(partial)
    assert assets.fashion_mnist_dir() == partial


def test_fetch_skips_what_is_present(empty_env, monkeypatch):
    monkeypatch.setenv("DRORAE_FID_WEIGHTS", str(_touch(empty_env / "fid.pt")))
    for net in assets.LPIPS_NETS:
        _touch(empty_env / "cache" / "weights" / f"lpips_{net}.pt")

    def no_download(*a, **k):
        raise AssertionError("fetch downloaded an asset that was present")

    monkeypatch.setattr(assets, "_pip_download", no_download)
    assets.fetch(only={"fid", "lpips"})


def test_fetch_and_cli_reject_unknown_assets(empty_env, capsys):
    with pytest.raises(AssetError, match="bogus"):
        assets.fetch(only={"bogus"})
    assert model_cli(["fetch", "--only", "fid,bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "bogus" in err


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with pytest.raises(RuntimeError):
        with assets.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(target.parent.iterdir()) == []
    with assets.atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and list(target.parent.iterdir()) == [target]


# --- the real converted weights (fetched once into the shared cache if missing) ---------------


@pytest.fixture(scope="module")
def real_weights():
    try:
        assets.fid_inception_weights()
        for net in assets.LPIPS_NETS:
            assets.lpips_weights(net)
    except AssetError:
        assets.fetch(only={"fid", "lpips"})


def test_fid_weights_are_a_plain_state_dict_for_torchmetrics(real_weights):
    from torchmetrics.image.fid import NoTrainInceptionV3

    sd = torch.load(assets.fid_inception_weights(), map_location="cpu", weights_only=True)
    path = str(assets.fid_inception_weights())
    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    assert set(sd) == set(net.state_dict())  # loaded strictly by torch-fidelity's constructor
    assert torch.equal(sd["Conv2d_1a_3x3.bn.weight"], torch.ones(32))  # TF's BN has no gamma
    assert not sd["fc.weight"].any()  # logits are not part of the FID graph: zero


@pytest.mark.parametrize("net", assets.LPIPS_NETS)
def test_lpips_weights_load_strictly_with_the_packaged_heads(real_weights, net):
    sd = torch.load(assets.lpips_weights(net), map_location="cpu", weights_only=True)
    model = assets.lpips_module(net)
    packaged = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("lin")}
    model.load_state_dict(sd, strict=True)
    for key, head in packaged.items():
        assert torch.equal(sd[key], head), key


def test_fetch_command_runs_without_runpy_warnings(empty_env, monkeypatch, capsys):
    """`python -m model fetch` (what `make install` runs), as runpy runs it, RuntimeWarnings as errors: runpy
    warns when importing the package already imported the module it is asked to run (as `model.assets` was)."""
    monkeypatch.delitem(sys.modules, "model.__main__", raising=False)  # this module imported it: a fresh start
    monkeypatch.setattr(sys, "argv", ["python -m model", "fetch", "--only", "bogus"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("model", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown asset(s) bogus") and err.count("\n") == 1, err

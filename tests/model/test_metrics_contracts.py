"""The metrics' input contracts and wiring: which weights, taps, defaults and files each entry point uses.

Written against the mutants mutmut found surviving in model/metrics.py (README: mutation score): each
test names what a wrong constant or a dropped argument would change.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import assets
from model.errors import AssetError, ConfigError
from model.metrics import (
    LPIPS,
    FIDInceptionV3,
    ReconstructionEvaluator,
    load_fid_inception,
    load_lpips,
    make_fid,
    make_kid,
    reference_features,
    stats_cache_path,
)

pytestmark = pytest.mark.usefixtures("offline_weights")  # tests/model/conftest.py


@pytest.fixture(scope="module")
def inception64():
    return load_fid_inception(feature=64)  # the first Inception tap: cheap on CPU


@pytest.fixture
def fid_weights_link(tmp_path) -> Path:
    """The FID weights under another name: a module that ignores its ``weights`` argument loses the name."""
    link = tmp_path / "elsewhere" / "inception.pt"
    link.parent.mkdir()
    link.symlink_to(assets.fid_inception_weights())
    return link


# --- the FID Inception ------------------------------------------------------------------------


def test_inception_defaults_to_pool3_and_takes_a_weights_path(fid_weights_link):
    assert FIDInceptionV3().num_features == 2048 and load_fid_inception().num_features == 2048
    net = load_fid_inception(fid_weights_link, feature=64)
    assert net.weights_path == fid_weights_link and net.num_features == 64
    assert FIDInceptionV3(64, fid_weights_link).weights_path == fid_weights_link
    with pytest.raises(ConfigError, match=r"FID feature=100 is not an Inception tap; expected one of \(64, 192"):
        FIDInceptionV3(100)
    with pytest.raises(AssetError, match="FID Inception weights not found: .*missing.pt"):
        FIDInceptionV3(64, fid_weights_link.parent / "missing.pt")


def test_inception_replicates_grayscale_and_clamps_floats(inception64):
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(2, 1, 32, 32, generator=g)
    wide = torch.rand(2, 3, 32, 32, generator=g) * 2 - 0.5  # outside [0, 1]: clamped, not wrapped around
    with torch.no_grad():
        torch.testing.assert_close(inception64(gray), inception64(gray.expand(-1, 3, -1, -1)), rtol=0, atol=0)
        torch.testing.assert_close(inception64(wide), inception64((wide.clamp(0, 1) * 255).byte()), rtol=0, atol=0)
        ones = torch.ones(1, 3, 32, 32)
        torch.testing.assert_close(inception64(ones), inception64(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)),
                                   rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=5))
def test_inception_rejects_what_is_not_a_batch_of_images(inception64, shape):
    """Anything but (B, 1 or 3, H, W) fails with the shape named, before any work."""
    if len(shape) == 4 and shape[1] in (1, 3):
        return  # a valid batch: its features are tested above
    with pytest.raises(ValueError, match=re.escape(f"expects images of shape (B, 3, H, W), got {tuple(shape)}")):
        inception64(torch.rand(*shape))


# --- torchmetrics' FID and KID on our Inception -------------------------------------------------


def test_make_fid_wiring(inception64, fid_weights_link):
    assert make_fid().inception.num_features == 2048
    fid = make_fid(feature=64, weights=fid_weights_link)
    assert fid.inception.weights_path == fid_weights_link and fid.inception.num_features == 64
    shared = make_fid(extractor=inception64, reset_real_features=False)
    assert shared.inception is inception64 and shared.reset_real_features is False


def test_make_kid_equals_the_unbiased_mmd_of_its_features(inception64, fid_weights_link):
    """KID with one subset of all images (any permutation of them gives the same value) is the unbiased
    MMD^2 with the kernel (x.y / d + 1)^3 of the features (Binkowski et al., 2018), in numpy."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g) * 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # make_kid silences torchmetrics' memory warning, nothing else
        kid = make_kid(extractor=inception64, subsets=2, subset_size=6)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    mean, _ = kid.compute()
    with torch.no_grad():
        x, y = (inception64(im).double().numpy() for im in (real, fake))  # (6, 64)

    def k(a, b):
        return (a @ b.T / 64 + 1) ** 3

    def off_diagonal_mean(m):
        return (m.sum() - np.trace(m)) / (6 * 5)

    expected = off_diagonal_mean(k(x, x)) + off_diagonal_mean(k(y, y)) - 2 * k(x, y).mean()
    assert mean.item() == pytest.approx(expected, rel=1e-5)
    assert make_kid().inception.num_features == 2048
    other = make_kid(feature=64, weights=fid_weights_link)
    assert other.inception.weights_path == fid_weights_link and other.inception.num_features == 64


# --- LPIPS ------------------------------------------------------------------------------------


def test_lpips_defaults_to_alex_and_maps_unit_images_to_its_range():
    lp = load_lpips()
    assert lp.net.pnet_type == "alex" and LPIPS().net.pnet_type == "alex"
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(lp(x, y), lp.net(2 * x - 1, 2 * y - 1).flatten(), rtol=1e-6, atol=0)


def test_lpips_loads_exactly_the_given_weights(tmp_path):
    """Heads scaled by 2 double the distance (LPIPS is linear in them); a state dict lacking a key is refused."""
    state = torch.load(assets.lpips_weights("alex"), weights_only=True)
    doubled = {k: (2 * v if ".model.1.weight" in k else v) for k, v in state.items()}
    torch.save(doubled, tmp_path / "doubled.pt")
    torch.save({k: v for k, v in state.items() if k != "lin0.model.1.weight"}, tmp_path / "partial.pt")
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        base = load_lpips("alex")(x, y)
        torch.testing.assert_close(load_lpips("alex", tmp_path / "doubled.pt")(x, y), 2 * base, rtol=1e-5, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_lpips("alex", tmp_path / "partial.pt")


# --- the cache of real statistics ---------------------------------------------------------------


def test_stats_cache_path_names(tmp_path):
    weights = assets.fid_inception_weights()
    fp = assets.weights_fingerprint(weights)
    default = stats_cache_path("Fashion-MNIST_v1.2", "32", 7, weights, cache_dir=tmp_path)
    assert default == tmp_path / f"Fashion-MNIST_v1.2-32px-n7-{fp}-tf1bilinear.npz"
    assert stats_cache_path("k", "32", 7, weights, 2048, tmp_path).name == f"k-32px-n7-{fp}-tf1bilinear.npz"
    assert stats_cache_path("k", "32", 7, weights, 64, tmp_path).name == f"k-32px-n7-{fp}-f64-tf1bilinear.npz"
    assert stats_cache_path("k", "32", 7, weights).parent == assets.cache_root() / "fid_stats"
    with pytest.raises(ConfigError, match="reference stats key 'a b'"):
        stats_cache_path("a b", "32", 7, weights)


def test_reference_features_key_non_square_images(tmp_path, inception64):
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    reference_features(images, "wide", n=2, cache_dir=tmp_path, extractor=inception64)
    assert [p.name.split("-")[1] for p in tmp_path.iterdir()] == ["32x48px"]


# --- the evaluator's construction -------------------------------------------------------------


@pytest.mark.parametrize(("reference", "n", "batch_size", "message"), [
    (torch.rand(2, 3, 8), None, 4, r"evaluation reference 'bad': expected \(N>=2, 3, H, W\) images, got \(2, 3, 8\)"),
    (torch.rand(1, 3, 8, 8), None, 4, r"expected \(N>=2, 3, H, W\) images, got \(1, 3, 8, 8\)"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, 4, r"expected float images in \[0, 1\], got torch.uint8"),
    (torch.rand(3, 3, 8, 8), 2, 4, "'bad': n=2 but 3 images were given"),
    ([torch.rand(2, 3, 8, 8)], None, 4, "'bad': batches of images need n >= 2, got n=None"),
    ([torch.rand(2, 3, 8, 8)], 1, 4, "need n >= 2, got n=1"),
    (torch.rand(2, 3, 8, 8), None, 0, "evaluation batch_size=0: expected >= 1"),
])
def test_evaluator_rejects_bad_input(reference, n, batch_size, message):
    with pytest.raises(ConfigError, match=message):
        ReconstructionEvaluator(reference, "bad", n=n, batch_size=batch_size)


def test_evaluator_smallest_valid_input_and_defaults(tmp_path, fid_weights_link):
    """Two images, batches of one, a streamed reference: accepted; the stats land in cache_dir; the
    defaults are the standard pool3, 200 bootstrap resamples with seed 0."""
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(2, 3, 32, 32, generator=g)
    recon = (ref + 0.1 * torch.rand(2, 3, 32, 32, generator=g)).clamp(0, 1)
    ev = ReconstructionEvaluator(ref, "two", batch_size=1, cache_dir=tmp_path, fid_feature=64,
                                 fid_weights=fid_weights_link, lpips_net="vgg")
    assert ev.inception.weights_path == fid_weights_link and ev.lpips.net.pnet_type == "vgg"
    assert ev.device == torch.device("cpu")
    assert len(list(tmp_path.glob("two-32px-n2-*-f64-tf1bilinear.npz"))) == 1
    out = ev.evaluate(recon)
    assert out["rfid_se_resamples"] == 200 and out["rfid_se_method"] == "bootstrap-gram"

    streamed = ReconstructionEvaluator(iter([ref]), "two", n=2, cache_dir=tmp_path, fid_feature=64)
    with pytest.raises(ValueError, match="evaluation 'two': the reference was streamed; use evaluate_pairs"):
        streamed.evaluate(recon)
    assert streamed.batch_size == 32 and streamed.rfid_seed == 0
    assert streamed.evaluate_pairs([(ref, recon)])["rfid_se"] == pytest.approx(out["rfid_se"], rel=1e-9)

    ev2048 = ReconstructionEvaluator(iter([ref]), "two", n=2, cache_dir=tmp_path)
    assert ev2048.inception.num_features == 2048


@pytest.mark.parametrize("resamples", [-1, 1])
def test_evaluator_rejects_a_resample_count_without_a_standard_error(tmp_path, resamples):
    """0 resamples means no rFID error; 1 cannot give a standard deviation, and a negative count is no count."""
    message = rf"^evaluation rfid_resamples={resamples}: expected 0 \(no rFID error\) or >= 2$"
    with pytest.raises(ConfigError, match=message):
        ReconstructionEvaluator(torch.rand(2, 3, 8, 8), "bad", cache_dir=tmp_path, fid_feature=64,
                                rfid_resamples=resamples)


def test_evaluator_puts_both_networks_on_its_device(tmp_path):
    """On a cache hit the reference is not run through the Inception, so a "meta" device (no data) shows
    where the evaluator put its networks; one left on the CPU would evaluate there."""
    ref = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ReconstructionEvaluator(ref, "dev", cache_dir=tmp_path, fid_feature=64)  # caches the reference statistics
    ev = ReconstructionEvaluator(ref, "dev", cache_dir=tmp_path, fid_feature=64, device="meta")
    assert ev.device == torch.device("meta")
    assert {p.device.type for p in ev.inception.parameters()} == {"meta"}
    assert {p.device.type for p in ev.lpips.parameters()} == {"meta"}


def test_evaluator_reads_the_reference_in_batches_of_its_batch_size(tmp_path, monkeypatch):
    """5 reference images in batches of 2 reach the Inception as 2, 2, 1 (the real forward still runs)."""
    sizes = []
    forward = FIDInceptionV3.forward
    monkeypatch.setattr(FIDInceptionV3, "forward", lambda self, x: sizes.append(len(x)) or forward(self, x))
    ReconstructionEvaluator(torch.rand(5, 3, 32, 32), "batches", batch_size=2, cache_dir=tmp_path, fid_feature=64)
    assert sizes == [2, 2, 1]

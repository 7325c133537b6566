"""Metrics against torchmetrics' documented values and independent closed forms (CPU, offline weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

from model import assets
from model.errors import ConfigError
from model.metrics import (
    FID_RESIZE,
    ReconstructionEvaluator,
    _FeatureMoments,
    frechet_distance,
    frechet_distance_to_features,
    load_fid_inception,
    load_lpips,
    make_fid,
    make_kid,
    reference_features,
    reference_stats,
    stats_cache_path,
)

pytestmark = pytest.mark.usefixtures("offline_weights")  # tests/model/conftest.py


@pytest.fixture(scope="module")
def inception64():
    return load_fid_inception(feature=64)  # the first Inception tap: cheap on CPU


# --- torchmetrics' documented examples, with our weight loading ------------------------------


@pytest.mark.slow  # 200 images at 299 px through the Inception's first block: ~10 s on 2 CPU cores
def test_fid_reproduces_torchmetrics_example():
    # torchmetrics 1.9 FrechetInceptionDistance docstring, run (as its doctests are) after seed 42.
    torch.manual_seed(42)
    fid = make_fid(feature=64)
    imgs_dist1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
    imgs_dist2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    fid.update(imgs_dist1, real=True)
    fid.update(imgs_dist2, real=False)
    assert fid.compute().item() == pytest.approx(12.6388, abs=1e-3)


@pytest.mark.slow  # 200 images through the full 2048-d Inception: about 40-80 s on 2 CPU cores
def test_kid_reproduces_torchmetrics_example():
    torch.manual_seed(42)
    kid = make_kid(subset_size=50)
    imgs_dist1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
    imgs_dist2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    kid.update(imgs_dist1, real=True)
    kid.update(imgs_dist2, real=False)
    mean, std = kid.compute()
    assert mean.item() == pytest.approx(0.0312, abs=5e-4)
    assert std.item() == pytest.approx(0.0025, abs=5e-4)


def test_inception_is_frozen_and_takes_unit_floats(inception64):
    assert not inception64.training and not any(p.requires_grad for p in inception64.parameters())
    inception64.train()
    assert not inception64.training
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(inception64(x), inception64((x * 255).byte()), rtol=0, atol=0)
        assert inception64(x).shape == (2, 64)


def test_make_fid_on_unit_floats_matches_torchmetrics_normalize():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g) * 0.8
    # The PyTorch runtime: 4 images make a 64-d FID so ill-conditioned that only identical features agree to 1e-6
    # (ONNX Runtime's, 1e-5 off: tests/model/test_fid_standard.py).
    ours = make_fid(extractor=load_fid_inception(feature=64, runtime="torch"))
    weights = str(assets.fid_inception_weights())
    # antialias=False: torchmetrics' switch to torch-fidelity's TF1 resize, ours (its default antialiases)
    ref = FrechetInceptionDistance(feature=64, normalize=True, feature_extractor_weights_path=weights, antialias=False)
    for m in (ours, ref):
        m.update(real, real=True)
        m.update(fake, real=False)
    assert ours.compute().item() == pytest.approx(ref.compute().item(), rel=1e-6)


# --- Frechet distance -------------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 2.0, 16), rng.uniform(0.1, 2.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_torchmetrics():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) @ rng.normal(size=(8, 8))
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = _compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distances_compute_in_float64_from_float32_stats():
    """Statistics given in float32 (as torch-fidelity's means are) are used exactly, in float64."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 6)) + 50, rng.normal(size=(30, 6)) * 1.3 + 50.01
    mu1, s1 = a.mean(0).astype(np.float32), np.cov(a, rowvar=False).astype(np.float32)
    mu2, s2 = b.mean(0).astype(np.float32), np.cov(b, rowvar=False).astype(np.float32)
    expected = _compute_fid(*(torch.from_numpy(v.astype(np.float64)) for v in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    feats = torch.from_numpy(b[:4])  # fewer images than dimensions: the (N, N) route
    direct = frechet_distance(mu1.astype(np.float64), s1.astype(np.float64), b[:4].mean(0),
                              np.cov(b[:4], rowvar=False))
    # a singular covariance costs every method ~1e-8 relative (square roots of round-off eigenvalues)
    assert frechet_distance_to_features(mu1, s1, feats) == pytest.approx(direct, rel=1e-7)
    two = frechet_distance_to_features(mu1, s1, feats[:2])  # two images: the least
    assert two == pytest.approx(frechet_distance(mu1, s1, b[:2].mean(0), np.cov(b[:2], rowvar=False)), rel=1e-7)
    with pytest.raises(ValueError, match="need at least 2 feature vectors, got 1"):
        frechet_distance_to_features(mu1, s1, feats[:1])


@pytest.mark.parametrize("n", [5, 40])  # fewer and more samples than dimensions
def test_frechet_distance_to_features_matches_torchmetrics(n):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 12)), rng.normal(size=(n, 12)) * 1.5 + 0.2
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    got = frechet_distance_to_features(mu1, s1, torch.from_numpy(b))
    # a singular covariance costs every method ~1e-8 relative (square roots of round-off eigenvalues)
    assert got == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    expected = _compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()
    assert got == pytest.approx(expected, rel=1e-7)


# --- cached real statistics -------------------------------------------------------------------


def test_reference_stats_cache_hit_and_key(tmp_path, inception64, monkeypatch):
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    calls = []
    forward = inception64.forward
    monkeypatch.setattr(inception64, "forward", lambda x: (calls.append(len(x)), forward(x))[1])

    mu, sigma = reference_stats(images, "toy", n=6, cache_dir=tmp_path, extractor=inception64, batch_size=4)
    assert sum(calls) == 6 and mu.dtype == np.float64 and sigma.shape == (64, 64)
    (path,) = tmp_path.glob("*.npz")
    assert path.name.startswith("toy-32px-n6-")

    calls.clear()  # second call: read from the cache, no image goes through the network
    mu2, sigma2 = reference_stats(images, "toy", n=6, cache_dir=tmp_path, extractor=inception64)
    assert calls == [] and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)

    # n is part of the key; an iterable of batches is read only up to n images
    mu4_iter, _ = reference_stats(iter(images.split(2)), "toy", n=4, cache_dir=tmp_path, extractor=inception64)
    assert calls == [2, 2] and len(list(tmp_path.glob("toy-32px-n4-*.npz"))) == 1
    mu4, _ = reference_stats(images[:4], "toy-b", n=4, cache_dir=tmp_path, extractor=inception64)
    np.testing.assert_allclose(mu4, mu4_iter, rtol=1e-12)

    # the same statistics as torchmetrics' FID state
    fid = make_fid(extractor=inception64)
    fid.update(images, real=True)
    np.testing.assert_allclose(mu, (fid.real_features_sum / 6).numpy(), rtol=1e-10)


def test_feature_moments_equal_numpy():
    """Streamed sum and Gram matrix over uneven batches give np.mean and np.cov (offset features: the
    one-pass formula's cancellation stays far below the tolerance)."""
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(23, 5)) * rng.uniform(0.1, 3.0, 5) + rng.uniform(0, 10, 5)
    moments = _FeatureMoments(5)
    for part in np.split(feats, [1, 8, 16]):
        moments.update(torch.from_numpy(part).float())
    mu, sigma = moments.stats()
    assert moments.n == 23
    f32 = feats.astype(np.float32).astype(np.float64)  # what the float32 features hold
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-12)


def test_feature_moments_accumulate_on_the_features_device():
    """The accumulators move to the first batch's device (on a GPU the Gram update stays there); the
    meta device shows the move on a machine without one."""
    moments = _FeatureMoments(4)
    moments.update(torch.zeros(3, 4, device="meta"))
    assert moments.sum.device.type == "meta" and moments.gram.device.type == "meta" and moments.n == 3

def test_stats_cache_key_carries_the_resize(tmp_path, inception64):
    """Statistics cached before the TF1 resize (names without it) are never read; the new file holds the
    per-image features in image order."""
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    weights = inception64.weights_path
    path = stats_cache_path("old", "32", 5, weights, 64, tmp_path)
    assert FID_RESIZE == "tf1bilinear" and path.name.endswith("-tf1bilinear.npz")
    assert path != stats_cache_path("old", "32", 5, weights, 2048, tmp_path)
    stale = tmp_path / f"old-32px-n5-{assets.weights_fingerprint(weights)}-f64.npz"  # the name before the switch
    np.savez(stale, mu=np.zeros(64), sigma=np.eye(64))

    stats = reference_features(images, "old", n=5, cache_dir=tmp_path, extractor=inception64, batch_size=2)
    with torch.no_grad():
        feats = inception64(images).numpy()  # (5, 64)
    np.testing.assert_array_equal(stats.features, feats)
    np.testing.assert_allclose(stats.mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stale.name, path.name])
    with np.load(path) as z:
        np.testing.assert_array_equal(z["features"], feats)
        np.testing.assert_array_equal(z["mu"], stats.mu)


def test_reference_stats_rejects_bad_input(tmp_path, inception64):
    images = torch.rand(3, 3, 32, 32)
    with pytest.raises(ConfigError, match="only 3 images"):
        reference_stats(images, "few", n=5, cache_dir=tmp_path, extractor=inception64)
    with pytest.raises(ConfigError, match="key"):
        reference_stats(images, "bad/key", n=3, cache_dir=tmp_path, extractor=inception64)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# --- LPIPS ------------------------------------------------------------------------------------


def test_lpips_identical_zero_different_positive_and_differentiable():
    lp = load_lpips("alex")
    g = torch.Generator().manual_seed(3)

    def smooth():
        return torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=64, mode="bilinear")

    x, y = smooth(), smooth()
    assert lp(x, x).abs().max().item() < 1e-6
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0.05).all()
    assert (lp(x, (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)) < d).all()
    lp.train()
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())
    xg = x.clone().requires_grad_(True)
    lp(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


# --- the evaluator ----------------------------------------------------------------------------


@pytest.mark.slow  # loads the full Inception and LPIPS and evaluates three times
def test_reconstruction_evaluator(tmp_path):
    g = torch.Generator().manual_seed(4)
    ref = torch.rand(4, 3, 32, 32, generator=g)
    ev = ReconstructionEvaluator(ref, "toy-eval", batch_size=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("toy-eval-32px-n4-*.npz"))) == 1

    same = ev.evaluate(ref.clone())
    assert same["psnr"] == float("inf")
    assert same["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert abs(same["rfid"]) < 1e-3 * np.trace(ev.sigma_real)
    assert same["images_per_s"] > 0 and same["eval_seconds"] > 0

    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    out = ev.evaluate(noisy)
    mse = ((noisy.double().numpy() - ref.double().numpy()) ** 2).reshape(4, -1).mean(1)
    assert out["psnr"] == pytest.approx(np.mean(10 * np.log10(1.0 / mse)), rel=1e-5)
    assert 0 < out["ssim"] < 1 and out["lpips"] > 0 and out["rfid"] > same["rfid"]
    with pytest.raises(ValueError, match="must match"):
        ev.evaluate(noisy[:3])


def test_evaluator_rfid_equals_torchmetrics_fid(tmp_path):
    g = torch.Generator().manual_seed(5)
    ref, recon = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g) * 0.9
    ev = ReconstructionEvaluator(ref, "toy-tm", batch_size=4, cache_dir=tmp_path, fid_feature=64)
    weights = str(assets.fid_inception_weights())
    tm = FrechetInceptionDistance(feature=64, normalize=True, feature_extractor_weights_path=weights, antialias=False)
    tm.update(ref, real=True)
    tm.update(recon, real=False)
    assert ev.evaluate(recon)["rfid"] == pytest.approx(tm.compute().item(), rel=1e-5)

"""Every metric's measurement error, against independent computations (numpy, scipy, torch-fidelity's features)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torchmetrics.functional.image import structural_similarity_index_measure

from model import assets, metrics
from model.errors import ConfigError
from model.metrics import ReconstructionEvaluator, _GramFID, fid_bootstrap, load_lpips, standard_error

pytestmark = pytest.mark.usefixtures("offline_weights")  # tests/model/conftest.py


def fid_scipy(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature sets the textbook way: np.cov and scipy.linalg.sqrtm (TTUR's fid.py)."""
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # N < D: singular, as it should be
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(covmean).real)


def bootstrap_brute_force(real: np.ndarray, fake: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The documented resamples, each image drawn with its pair, each FID recomputed from scratch."""
    n = len(real)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return np.array([fid_scipy(real[i], fake[i]) for i in draws])


def paired_features(n: int, d: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)
    fake = 0.8 * real + 0.5 * rng.normal(size=(n, d)) + 0.3  # correlated with its pair, shifted
    shift = offset * rng.uniform(0.5, 1.5, d)  # a common offset (different per dimension) does not change FID
    return real + shift, fake + shift


# --- the rFID bootstrap -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "method", "rel"), [
    (12, 20, "bootstrap-gram", 1e-6),  # N < D: scipy's sqrtm of a singular product is good to ~1e-7
    (30, 8, "bootstrap-cov", 1e-10),
])
def test_fid_bootstrap_equals_brute_force(n, d, method, rel):
    real, fake = paired_features(n, d, seed=n)
    got, got_method = fid_bootstrap(real, fake, resamples=25, seed=3)
    expected = bootstrap_brute_force(real, fake, 25, seed=3)
    assert got_method == method
    np.testing.assert_allclose(got, expected, rtol=rel)
    assert got.std(ddof=1) == pytest.approx(expected.std(ddof=1), rel=10 * rel)


def test_fid_bootstrap_seed_and_resample_count():
    real, fake = paired_features(10, 16, seed=0)
    threads = torch.get_num_threads()
    a, _ = fid_bootstrap(real, fake, resamples=7, seed=1)
    assert torch.get_num_threads() == threads  # the Gram route's single thread is given back
    b, _ = fid_bootstrap(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), resamples=7, seed=1)
    c, _ = fid_bootstrap(real, fake, resamples=7, seed=2)
    assert a.shape == (7,) and np.allclose(a, b, rtol=1e-5) and not np.allclose(a, c)
    # the (D, D) route is capped: two 2048-d eigensolves per resample
    real, fake = paired_features(12, 4, seed=0)
    reps, method = fid_bootstrap(real, fake, resamples=200, seed=0)
    assert method == "bootstrap-cov" and len(reps) == metrics.COV_ROUTE_MAX_RESAMPLES == 50
    assert len(fid_bootstrap(real, fake, resamples=3)[0]) == 3


def test_fid_bootstrap_defaults_and_smallest_input():
    real, fake = paired_features(6, 8, seed=1)
    reps, _ = fid_bootstrap(real, fake)
    assert len(reps) == 200 and np.array_equal(reps, fid_bootstrap(real, fake, 200, seed=0)[0])
    two, _ = fid_bootstrap(real[:2], fake[:2], resamples=2)  # two images, two resamples: the least
    np.testing.assert_allclose(two, bootstrap_brute_force(real[:2], fake[:2], 2, seed=0), rtol=1e-6, atol=1e-9)
    assert fid_bootstrap(real[:4, :4], fake[:4, :4], 3)[1] == "bootstrap-gram"  # N = D: the Gram route still


def test_fid_bootstrap_and_standard_error_warn_of_nothing():
    real, fake = paired_features(6, 8, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_bootstrap(real, fake, resamples=3)
        standard_error(np.array([np.inf, np.inf]))


def test_fid_bootstrap_threads(monkeypatch):
    """The Gram route's small SVDs run on one thread; the (D, D) route keeps the caller's threads."""
    seen = []
    svdvals, eigh = torch.linalg.svdvals, torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "svdvals", lambda a: (seen.append(torch.get_num_threads()), svdvals(a))[1])
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: (seen.append(torch.get_num_threads()), eigh(a))[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fid_bootstrap(*paired_features(6, 8, seed=3), resamples=3)
        assert seen == [1, 1, 1]
        seen.clear()
        fid_bootstrap(*paired_features(9, 3, seed=3), resamples=3)
        assert seen == [2] * 3 and torch.get_num_threads() == 2  # frechet_distance: one eigh per resample
    finally:
        torch.set_num_threads(threads)


def test_fid_bootstrap_rejects_bad_input():
    real, fake = paired_features(6, 4, seed=0)
    with pytest.raises(ValueError, match="resamples=1"):
        fid_bootstrap(real, fake, resamples=1)
    with pytest.raises(ValueError, match=r"\(6, 4\) and \(5, 4\)"):
        fid_bootstrap(real, fake[:5])
    with pytest.raises(ValueError, match="N>=2"):
        fid_bootstrap(real[:1], fake[:1])


@pytest.mark.parametrize("offset", [0.0, 10000.0])
def test_gram_fid_equals_direct_formula(offset):
    """Tr((S_r S_f)^(1/2)) as the nuclear norm of the (N, N) centred cross-Gram, with counts as weights.

    N > D here, where scipy's sqrtm is exact to ~1e-14: a common offset of ~10^4 (FID unchanged) costs
    the uncentred Grams ~1e-6 of precision, the Grams of each set centred on its mean ~1e-12.
    """
    real, fake = paired_features(40, 10, seed=4, offset=offset)
    gram = _GramFID(torch.from_numpy(real), torch.from_numpy(fake))
    assert gram(torch.ones(40, dtype=torch.int64)) == pytest.approx(fid_scipy(real, fake), rel=1e-10)
    counts = torch.from_numpy(np.random.default_rng(5).multinomial(40, np.full(40, 1 / 40)))
    rows = np.repeat(np.arange(40), counts.numpy())  # the resample as repeated rows
    assert gram(counts) == pytest.approx(fid_scipy(real[rows], fake[rows]), rel=1e-10)


# --- standard errors of the means ----------------------------------------------------------------


def test_standard_error_matches_numpy():
    values = np.random.default_rng(6).gamma(2.0, 3.0, size=37)
    assert standard_error(values) == pytest.approx(np.std(values, ddof=1) / np.sqrt(37), rel=1e-12)
    assert standard_error(torch.tensor([1.0, 3.0])) == pytest.approx(1.0, rel=1e-12)  # std sqrt(2), n 2
    assert math.isnan(standard_error(np.array([np.inf, np.inf, 30.0])))  # PSNR of identical images


# --- the evaluator ------------------------------------------------------------------------------


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear")
    recon = (ref + 0.08 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return (ref * 255).round() / 255, (recon * 255).round() / 255  # (N, 3, 32, 32) on uint8 levels


def test_evaluator_standard_errors_match_independent_values(tmp_path):
    """rfid_se from torch-fidelity's own features, bootstrapped by brute force; the other errors from
    per-image values computed one image at a time (PSNR in numpy)."""
    n = 8
    ref, recon = _images(n, seed=7)
    # The PyTorch runtime: the features torch-fidelity's bit for bit, so only the statistics are under test.
    ev = ReconstructionEvaluator(ref, "toy-se", batch_size=3, cache_dir=tmp_path, fid_feature=64,
                                 rfid_resamples=30, rfid_seed=11, inception_runtime="torch")
    out = ev.evaluate(recon)

    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["64"],
                                         feature_extractor_weights_path=str(assets.fid_inception_weights()))
    with torch.no_grad():
        (f_real,), (f_fake,) = theirs((ref * 255).byte()), theirs((recon * 255).byte())  # (N, 64) each
    expected = bootstrap_brute_force(f_real.double().numpy(), f_fake.double().numpy(), 30, seed=11)
    assert out["rfid"] == pytest.approx(fid_scipy(f_real.double().numpy(), f_fake.double().numpy()), rel=1e-6)
    assert out["rfid_se"] == pytest.approx(expected.std(ddof=1), rel=1e-6)
    assert out["rfid_se_method"] == "bootstrap-gram" and out["rfid_se_resamples"] == 30

    x, y = recon.double().numpy(), ref.double().numpy()
    psnr = 10 * np.log10(1.0 / ((x - y) ** 2).reshape(n, -1).mean(1))
    ssim = np.array([structural_similarity_index_measure(recon[i:i + 1], ref[i:i + 1], data_range=1.0).item()
                     for i in range(n)])
    lp = load_lpips("alex")
    lpips = np.array([lp(recon[i:i + 1], ref[i:i + 1]).item() for i in range(n)])
    for name, values in (("psnr", psnr), ("ssim", ssim), ("lpips", lpips)):
        assert out[name] == pytest.approx(values.mean(), rel=1e-5), name
        assert out[f"{name}_se"] == pytest.approx(values.std(ddof=1) / np.sqrt(n), rel=1e-4), name

    # a second evaluator reads the real features from the cache: the same pairs, the same error
    again = ReconstructionEvaluator(ref, "toy-se", batch_size=4, cache_dir=tmp_path, fid_feature=64,
                                    rfid_resamples=30, rfid_seed=11, inception_runtime="torch")
    np.testing.assert_array_equal(again.features_real, f_real.numpy())
    assert again.evaluate(recon)["rfid_se"] == pytest.approx(out["rfid_se"], rel=1e-9)


def test_evaluator_without_features_or_resamples(tmp_path, monkeypatch):
    ref, recon = _images(5, seed=8)
    kw = {"batch_size": 5, "cache_dir": tmp_path, "fid_feature": 64}
    off = ReconstructionEvaluator(ref, "toy-off", rfid_resamples=0, **kw).evaluate(recon)
    assert math.isnan(off["rfid_se"]) and off["rfid_se_method"] == "none" and off["rfid_se_resamples"] == 0
    for bad in (1, -1):
        with pytest.raises(ConfigError, match=f"rfid_resamples={bad}"):
            ReconstructionEvaluator(ref, "toy-off", rfid_resamples=bad, **kw)

    # at FEATURES_KEEP_MAX images the features are kept; one more and neither set keeps them
    monkeypatch.setattr(metrics, "FEATURES_KEEP_MAX", 5)
    kept = ReconstructionEvaluator(ref, "toy-keep", **kw)
    assert kept.features_real.shape == (5, 64)
    with_se = kept.evaluate(recon)
    assert with_se["rfid_se_method"] == "bootstrap-gram" and with_se["rfid_se"] > 0
    monkeypatch.setattr(metrics, "FEATURES_KEEP_MAX", 4)
    big = ReconstructionEvaluator(ref, "toy-big", **kw)
    assert big.features_real is None
    out = big.evaluate(recon)
    assert math.isnan(out["rfid_se"]) and out["rfid_se_method"] == "none"
    assert out["rfid"] == pytest.approx(off["rfid"], rel=1e-6)  # the (D, D) route: the same rFID

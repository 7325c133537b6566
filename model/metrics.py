"""Reconstruction metrics: rFID (and KID), PSNR, SSIM, LPIPS, with offline weights, each with its standard error.

rFID is the Frechet distance (Heusel et al., 2017) between Inception pool3 features of the
reconstructions and of the originals of a fixed validation set,

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)),

computed with the standard FID Inception (TF 2015-12-05 weights) exactly as torch-fidelity 0.4.0 computes it:
torch-fidelity's graph through torchmetrics' ``NoTrainInceptionV3`` with ``antialias=False``, i.e. the
TensorFlow-1 style bilinear resize to 299 px of the TF evaluators (torchmetrics' default, a PyTorch
antialiased resize, moves FID by ~3% at 32 and 64 px). The weights come from ``model.assets`` (never
downloaded here). The real-image statistics (mu_r, S_r), and their per-image features for the
bootstrap, are computed once per (dataset key, resolution, n, resize) and cached on disk.

Each metric comes with its measurement error over the evaluation images: the standard error of the
mean for PSNR, SSIM and LPIPS, and a paired bootstrap over the images for rFID (``fid_bootstrap``).
FID at N images is biased upward for small N; a sweep evaluates every trial on the same N images,
so comparisons within it hold.

On CPU the Inception runs in ONNX Runtime by default (``inception_runtime="auto"``): the same graph
and weights, exported once per input size into the cache (``<cache>/fid_onnx``), 2.1-2.4x the images/s
of PyTorch's CPU kernels on one thread (the default sweep's evaluation: 0.51x the time, bench/default_sweep.py),
with features within 1e-4 of torch-fidelity's and rFID within 1e-3 (tests/model/test_fid_standard.py). On
CUDA, or with ``inception_runtime="torch"``, the PyTorch graph runs: torch-fidelity's features bit for bit.
The runtime is not part of the real-image statistics' cache key: both give the same features to 1e-4.

Images are float tensors in [0, 1] of shape (B, 3, H, W) everywhere (uint8 in [0, 255] is also
accepted by the Inception extractor).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance

from drorae_io import atomic_path

from . import assets
from .config import exception_line
from .errors import ConfigError
from .progress import Progress

log = logging.getLogger(__name__)

FID_FEATURE_DIMS = (64, 192, 768, 2048)  # the Inception taps torchmetrics offers; 2048 = pool3, the standard
# How images reach 299 px: torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x. Part of the
# cache key of the real-image statistics, so none made with another resize is ever reused.
FID_RESIZE = "tf1bilinear"
# Where the Inception runs: auto = ONNX Runtime on CPU when installed (else PyTorch), PyTorch on CUDA.
INCEPTION_RUNTIMES = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17
# Per-image Inception features are kept (reconstructions) and cached (real images) for the rFID
# bootstrap up to this many images: 10k x 2048 float32 = 80 MB.
FEATURES_KEEP_MAX = 10_000


# --------------------------------------------------------------------------------------------
# FID Inception
# --------------------------------------------------------------------------------------------


class FIDInceptionV3(NoTrainInceptionV3):
    """torch-fidelity 0.4.0's FID Inception (TF1 bilinear resize) with offline weights, on [0, 1] floats or uint8.

    torchmetrics' ``NoTrainInceptionV3`` runs torch-fidelity's ``FeatureExtractorInceptionV3`` graph; with
    ``antialias=False`` its forward is torch-fidelity's line for line (float32, TF1-style bilinear resize to
    299, (x - 128) / 128), so the features are torch-fidelity's bit for bit (tests/model/test_fid_standard.py).
    """

    def __init__(self, feature: int = 2048, weights: Path | None = None, runtime: str = "auto"):
        if feature not in FID_FEATURE_DIMS:
            raise ConfigError(f"FID feature={feature} is not an Inception tap; expected one of {FID_FEATURE_DIMS}")
        if runtime not in INCEPTION_RUNTIMES:
            raise ConfigError(f"inception_runtime={runtime!r}: expected one of {', '.join(INCEPTION_RUNTIMES)}")
        if runtime == "onnxruntime" and not _onnx_available():
            raise ConfigError("eval.inception_runtime=onnxruntime: the onnxruntime and onnx packages are not "
                              "installed; pip install onnxruntime onnx, or use auto")
        path = Path(weights) if weights is not None else assets.fid_inception_weights()
        if not path.is_file():
            raise assets.AssetError(f"FID Inception weights not found: {path}; {assets.FIX_HINT}")
        # With a weights path torch-fidelity loads (strictly) from disk instead of its URL.
        super().__init__("inception-v3-compat", [str(feature)], feature_extractor_weights_path=str(path),
                         antialias=False)  # FID_RESIZE: torch-fidelity's TF1 bilinear, not torchmetrics' default
        self.num_features = feature  # read by torchmetrics, so it does not probe with a random image
        self.weights_path = path
        self.runtime = runtime
        self._sessions: dict[tuple, object] = {}  # (H, W, threads) -> onnxruntime.InferenceSession
        self._onnx_failed = False  # auto: the export or session failed once here, so PyTorch runs it
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Stay in eval mode (torchmetrics' version lacks the default for ``mode``, so ``.train()`` failed)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) float in [0, 1] or uint8 in [0, 255]; resized to 299 inside. Returns (B, feature)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"FID Inception expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:  # grayscale datasets: replicate the channel, as is usual for FID
            x = x.expand(-1, 3, -1, -1)
        if x.dtype != torch.uint8:
            x = (x.clamp(0, 1) * 255).byte()  # the same quantization as torchmetrics' normalize=True
        if self.runs_on(x.device) == "onnxruntime":
            return self._onnx_forward(x)
        return super().forward(x)  # (B, feature)

    def runs_on(self, device: str | torch.device = "cpu") -> str:
        """The runtime that images on ``device`` go through: ``onnxruntime`` or ``torch``."""
        cpu = torch.device(device).type == "cpu"
        onnx = self.runtime != "torch" and cpu and not self._onnx_failed and _onnx_available()
        return "onnxruntime" if onnx else "torch"

    def onnx_path(self, height: int, width: int) -> Path:
        """The cached ONNX export of this graph for (B, 3, height, width) uint8 input (the resize is in it)."""
        import onnxruntime

        tag = f"{assets.weights_fingerprint(self.weights_path)}-f{self.num_features}-{height}x{width}-{FID_RESIZE}"
        versions = f"torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}-opset{ONNX_OPSET}"
        return assets.cache_root() / "fid_onnx" / f"inception-{tag}-{versions}.onnx"

    def _onnx_forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        threads = torch.get_num_threads()  # the trial's share of the CPU, as for PyTorch's own kernels
        session = self._sessions.get((h, w, threads))
        if session is None:
            try:
                session = self._onnx_session(h, w, threads)
            except Exception as e:  # auto means the faster runtime where it works, PyTorch where it does not
                if self.runtime == "onnxruntime":
                    raise
                self._onnx_failed = True
                log.warning("FID Inception: ONNX Runtime failed for %dx%d input (%s); PyTorch runs it instead "
                            "(eval.inception_runtime: auto)", h, w, exception_line(e))
                return super().forward(x)
            self._sessions[(h, w, threads)] = session
        (feats,) = session.run(None, {"images": np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(feats).reshape(b, -1)

    def _onnx_session(self, height: int, width: int, threads: int):
        import onnxruntime

        path = self.onnx_path(height, width)
        if not path.is_file():
            self._export_onnx(path, height, width)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No busy-waiting between ops: two 1-thread trials share 2 cores (measured 15% faster without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _export_onnx(self, path: Path, height: int, width: int) -> None:
        t = time.perf_counter()
        graph = _InceptionGraph(self).eval()
        example = torch.zeros(2, 3, height, width, dtype=torch.uint8)
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on torch-fidelity's resize (constants at this size)
            torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        log.info("FID Inception: exported to ONNX for %dx%d input in %.1f s: %s", height, width,
                 time.perf_counter() - t, path)


class _InceptionGraph(nn.Module):
    """torch-fidelity's forward (uint8 in, the chosen tap out) as one module, for the ONNX export."""

    def __init__(self, inception: FIDInceptionV3):
        super().__init__()
        self.inception = inception

    def forward(self, x: Tensor) -> Tensor:
        return self.inception._torch_fidelity_forward(x)[0]


@functools.cache
def _onnx_available() -> bool:
    """Whether ONNX Runtime (to run) and onnx (to export with) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_fid_inception(
    weights: Path | None = None, feature: int = 2048, device: str | torch.device = "cpu", runtime: str = "auto"
) -> FIDInceptionV3:
    """FID Inception (TF 2015-12-05 weights, ``feature``-d features), eval mode, frozen, never downloads."""
    return FIDInceptionV3(feature, weights, runtime).to(device)


def make_fid(
    feature: int = 2048, *, extractor: nn.Module | None = None, weights: Path | None = None, **kw
) -> FrechetInceptionDistance:
    """torchmetrics ``FrechetInceptionDistance`` on our offline Inception (or a shared ``extractor``)."""
    extractor = extractor if extractor is not None else load_fid_inception(weights, feature)
    return FrechetInceptionDistance(feature=extractor, **kw)


def make_kid(
    feature: int = 2048, *, extractor: nn.Module | None = None, weights: Path | None = None, **kw
) -> KernelInceptionDistance:
    """torchmetrics ``KernelInceptionDistance`` on our offline Inception (or a shared ``extractor``)."""
    extractor = extractor if extractor is not None else load_fid_inception(weights, feature)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(feature=extractor, **kw)


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64: torchmetrics' value.

    torchmetrics sums sqrt(eig(S1 S2)) with a general (non-symmetric) eigensolver. The eigenvalues
    of S1 S2 are those of the symmetric PSD matrix R S2 R with R = S1^(1/2), so two symmetric
    eigensolves give the same trace (4e-8 relative at 2048-d, about 2 s on 2 CPU cores) with real,
    clamped eigenvalues, also when the covariances are singular (fewer images than dimensions).
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    w, v = torch.linalg.eigh(s1)
    r = (v * w.clamp(min=0).sqrt()) @ v.T  # S1^(1/2), (D, D)
    m = r @ s2 @ r
    c = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * c)


def frechet_distance_to_features(mu1, sigma1, feats: Tensor) -> float:
    """The Frechet distance between N(mu1, S1) and the Gaussian fitted to ``feats`` (N, D), unbiased.

    With F the centred features, S2 = F^T F / (N - 1) and the nonzero eigenvalues of S1 S2 are those of
    the (N, N) matrix F S1 F^T / (N - 1): for N below D (a few hundred evaluation images against
    2048-d features) this costs a fraction of a second instead of a (D, D) eigensolve.
    """
    f = feats.detach().double().cpu()  # (N, D)
    n, d = f.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors, got {n}")
    if n > d:
        mu2 = f.mean(0)
        return frechet_distance(mu1, sigma1, mu2, torch.cov(f.T))
    mu1 = torch.as_tensor(np.asarray(mu1), dtype=torch.float64)
    s1 = torch.as_tensor(np.asarray(sigma1), dtype=torch.float64)
    mu2 = f.mean(0)
    fc = f - mu2  # (N, D)
    m = fc @ s1 @ fc.T / (n - 1)  # (N, N)
    c = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + fc.square().sum() / (n - 1) - 2 * c)


class _FeatureMoments:
    """Streaming sum and Gram matrix of features in float64 (torchmetrics' FID state).

    Accumulated on the features' device: on a GPU the (D, D) Gram update of every batch stays there.
    """

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, feats: Tensor) -> None:
        f = feats.detach().double()  # (B, D)
        if self.n == 0:
            self.sum, self.gram = self.sum.to(f.device), self.gram.to(f.device)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.gram += f.T @ f

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        mu = self.sum.cpu() / self.n  # (D,)
        sigma = (self.gram.cpu() - self.n * torch.outer(mu, mu)) / (self.n - 1)  # (D, D), unbiased
        return mu.numpy(), sigma.numpy()


# --------------------------------------------------------------------------------------------
# rFID's standard error: a paired bootstrap over the evaluation images
# --------------------------------------------------------------------------------------------

COV_ROUTE_MAX_RESAMPLES = 50  # N > D: each resample costs two (D, D) eigensolves (~2 s at D = 2048)


class _GramFID:
    """The FID of a resample of N paired (real, fake) features from three (N, N) Gram matrices (N <= D).

    A resample is a count c_i of each image (sum N); with w = c / N its means are w^T F, and with
    Fdot the rows sqrt(c_i) (f_i - mu) its covariances Fdot^T Fdot / (N - 1). The nonzero eigenvalues
    of S_r S_f are the squared singular values of Fdot_f Fdot_r^T / (N - 1), so

        Tr((S_r S_f)^(1/2)) = ||C^(1/2) H_w K H_w^T C^(1/2)||_* / (N - 1),  K = F_f F_r^T,

    with H_w the centring by the weighted means, on the U (~0.63 N) images drawn: a (U, U) SVD per
    resample instead of (D, D) work. The traces are sum_i c_i G_ii - N w^T G w; the mean term is
    w^T M w with M = (F_f - F_r)(F_f - F_r)^T.
    """

    def __init__(self, real: Tensor, fake: Tensor):
        self.n = len(real)
        diff = fake - real  # (N, D)
        # Each set shifted by its own mean (FID and its terms do not change): better-conditioned traces.
        real, fake = real - real.mean(0), fake - fake.mean(0)  # (N, D)
        self.g_mean = diff @ diff.T  # (N, N)
        self.g_real = real @ real.T  # (N, N)
        self.g_fake = fake @ fake.T  # (N, N)
        self.g_cross = fake @ real.T  # (N, N)

    def _trace(self, g: Tensor, c: Tensor, w: Tensor) -> Tensor:
        """Tr(S) of the resample from its (U, U) Gram block g: (sum_i c_i g_ii - N w^T g w) / (N - 1)."""
        return (c @ g.diagonal() - self.n * (w @ g @ w)) / (self.n - 1)

    def __call__(self, counts: Tensor) -> float:
        """counts: (N,) how often each image is drawn (sum N). Returns the resample's FID."""
        u = counts.nonzero().flatten()  # (U,) the images drawn
        c = counts[u].double()  # (U,)
        w = c / self.n  # (U,)
        block = torch.meshgrid(u, u, indexing="ij")
        mean_term = w @ self.g_mean[block] @ w
        k = self.g_cross[block]  # (U, U)
        kw, wk = k @ w, w @ k  # (U,), (U,)
        kc = k - kw[:, None] - wk[None, :] + w @ kw  # (U, U): (f_a - mu_f) . (r_b - mu_r)
        root = c.sqrt()
        cross = torch.linalg.svdvals(root[:, None] * kc * root[None, :]).sum() / (self.n - 1)
        trace_real = self._trace(self.g_real[block], c, w)
        trace_fake = self._trace(self.g_fake[block], c, w)
        return float(mean_term + trace_real + trace_fake - 2 * cross)


def _cov_fid(real: Tensor, fake: Tensor, counts: Tensor) -> float:
    """The FID of a resample (counts (N,), as in ``_GramFID``) through (D, D) covariances: for N > D."""
    u = counts.nonzero().flatten()  # (U,)
    c = counts[u].double()  # (U,)
    n = len(real)
    moments = []
    for f in (real[u], fake[u]):  # (U, D)
        mu = (c / n) @ f  # (D,)
        fdot = c.sqrt()[:, None] * (f - mu)  # (U, D)
        moments += [mu, fdot.T @ fdot / (n - 1)]  # (D,), (D, D)
    return frechet_distance(*moments)


def fid_bootstrap(
    real: Tensor | np.ndarray, fake: Tensor | np.ndarray, resamples: int = 200, seed: int = 0
) -> tuple[np.ndarray, str]:
    """FIDs of bootstrap resamples of N paired images, and the route taken; their std is rFID's standard error.

    real, fake: (N, D) features; row i of both belongs to evaluation image i (its original and its
    reconstruction), so image i is drawn with both (a paired bootstrap: the error of rFID over which
    N images were evaluated, the real statistics' own noise included). Resample b draws the images
    ``numpy.random.default_rng(seed).integers(0, N, size=(resamples, N))[b]``. Returns (replicates
    (R,), method): "bootstrap-gram" (N <= D, ``_GramFID``: (N, N) work per resample) or
    "bootstrap-cov" (N > D: two (D, D) eigensolves per resample, so at most
    ``COV_ROUTE_MAX_RESAMPLES`` resamples).
    """
    real, fake = (torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in (real, fake))  # (N, D)
    if real.dim() != 2 or real.shape != fake.shape or len(real) < 2:
        raise ValueError(f"fid_bootstrap: expected two (N>=2, D) feature arrays, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if resamples < 2:
        raise ValueError(f"fid_bootstrap: resamples={resamples}, need at least 2 for a standard error")
    n, d = real.shape
    if n <= d:
        method, fid = "bootstrap-gram", _GramFID(real, fake)
    else:
        method, fid = "bootstrap-cov", functools.partial(_cov_fid, real, fake)
        resamples = min(resamples, COV_ROUTE_MAX_RESAMPLES)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (R, N)
    counts = torch.from_numpy(np.stack([np.bincount(row, minlength=n) for row in draws]))  # (R, N)
    threads = torch.get_num_threads()
    if method == "bootstrap-gram":
        # Small SVDs gain nothing from threads and stall when the cores are busy (N = 300 on 2 busy
        # cores: 200 resamples in 1.1 s with one thread, 4-24 s with two).
        torch.set_num_threads(1)
    try:
        return np.array([fid(c) for c in counts]), method
    finally:
        torch.set_num_threads(threads)


def standard_error(values: Tensor | np.ndarray) -> float:
    """The standard error of the mean of per-image values: sample std (ddof=1) / sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf values (PSNR of identical images) give nan, not a warning
        return float(v.std(ddof=1) / np.sqrt(len(v)))


# --------------------------------------------------------------------------------------------
# Cached real statistics
# --------------------------------------------------------------------------------------------


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        return images.split(batch_size)
    return iter(images)


def _resolution(batch: Tensor) -> str:
    h, w = batch.shape[-2:]
    return f"{h}" if h == w else f"{h}x{w}"


class ReferenceStats(NamedTuple):
    """The real images' Inception statistics, and their per-image features for the rFID bootstrap."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, unbiased
    features: np.ndarray | None  # (n, D) float32 in image order; None above FEATURES_KEEP_MAX images


def stats_cache_path(
    key: str, resolution: str, n: int, weights: Path, feature: int = 2048, cache_dir: Path | None = None
) -> Path:
    """``<cache>/fid_stats/<key>-<res>px-n<n>-<weights fingerprint>-<FID_RESIZE>.npz``.

    The resize is in the name: statistics cached before the switch to torch-fidelity's TF1 resize
    (names without it) are never read.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", key):
        raise ConfigError(f"reference stats key {key!r}: use only letters, digits, '.', '_' and '-'")
    fp = assets.weights_fingerprint(weights) + ("" if feature == 2048 else f"-f{feature}")
    root = Path(cache_dir) if cache_dir is not None else assets.cache_root() / "fid_stats"
    return root / f"{key}-{resolution}px-n{n}-{fp}-{FID_RESIZE}.npz"


@torch.no_grad()
def reference_stats(
    images: Tensor | Iterable[Tensor],
    key: str,
    n: int,
    cache_dir: Path | None = None,
    *,
    extractor: FIDInceptionV3 | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    runtime: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 of the Inception features of the first ``n`` images, cached on disk.

    images: a (N, 3, H, W) tensor or an iterable of (B, 3, H, W) batches in [0, 1]. On a cache hit
    only the first batch is read (its resolution is part of the key) and no network is loaded.
    extractor: default the 2048-d pool3 Inception with the weights from ``model.assets``, on ``runtime``
    (``INCEPTION_RUNTIMES``).
    """
    stats = reference_features(images, key, n, cache_dir, extractor=extractor, batch_size=batch_size, device=device,
                               runtime=runtime)
    return stats.mu, stats.sigma


@torch.no_grad()
def reference_features(
    images: Tensor | Iterable[Tensor],
    key: str,
    n: int,
    cache_dir: Path | None = None,
    *,
    extractor: FIDInceptionV3 | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    runtime: str = "auto",
) -> ReferenceStats:
    """``reference_stats`` with the per-image features (up to ``FEATURES_KEEP_MAX`` images), cached together."""
    if n < 2:
        raise ConfigError(f"reference stats {key!r}: n={n}, need at least 2 images for a covariance")
    it = iter(_batches(images, batch_size))
    first = next(it, None)
    if first is None:
        raise ConfigError(f"reference stats {key!r}: no images given")
    if extractor is not None:
        path = stats_cache_path(key, _resolution(first), n, extractor.weights_path, extractor.num_features, cache_dir)
    else:
        path = stats_cache_path(key, _resolution(first), n, assets.fid_inception_weights(), 2048, cache_dir)
    if path.is_file():
        with np.load(path) as z:
            log.info("FID reference stats for %s from cache: %s", key, path)
            return ReferenceStats(z["mu"], z["sigma"], z["features"] if "features" in z else None)

    log.info("FID reference stats for %s: computing them over %d images", key, n)
    extractor = extractor if extractor is not None else load_fid_inception(device=device, runtime=runtime)
    moments = _FeatureMoments(extractor.num_features)
    kept: list[Tensor] | None = [] if n <= FEATURES_KEEP_MAX else None
    dev = next(extractor.parameters()).device
    t0 = time.perf_counter()
    with Progress(n, f"FID stats {key}", log, unit="images") as bar:
        for batch in itertools.chain([first], it):
            batch = batch[: n - moments.n]
            feats = extractor(batch.to(dev))  # (B, D) float32
            moments.update(feats)
            if kept is not None:
                kept.append(feats.cpu())
            bar.update(batch.shape[0])
            if moments.n >= n:
                break
    if moments.n < n:
        raise ConfigError(f"reference stats {key!r}: n={n} requested but only {moments.n} images were given")
    seconds = time.perf_counter() - t0
    log.info("FID reference stats for %s: %d images in %.1fs (%.1f images/s)", key, n, seconds, n / seconds)
    mu, sigma = moments.stats()
    arrays = {"mu": mu, "sigma": sigma}
    if kept is not None:
        arrays["features"] = torch.cat(kept).numpy()  # (n, D) float32
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return ReferenceStats(mu, sigma, arrays.get("features"))


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between [0, 1] images; frozen, always in eval mode, differentiable wrt inputs."""

    def __init__(self, net: str = "alex", weights: Path | None = None):
        super().__init__()
        path = Path(weights) if weights is not None else assets.lpips_weights(net)
        self.net = assets.lpips_module(net)  # package heads + random trunk: nothing downloaded
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode (the heads' dropout must stay off, also inside a model in training)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: (B, 3, H, W) in [0, 1]. Returns (B,) distances."""
        return self.net(x, y, normalize=True).flatten()  # normalize: [0, 1] -> [-1, 1]


def load_lpips(net: str = "alex", weights: Path | None = None, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS v0.1 (``alex`` or ``vgg``) with offline weights from ``model.assets``."""
    return LPIPS(net, weights).to(device)


# --------------------------------------------------------------------------------------------
# Reconstruction evaluation
# --------------------------------------------------------------------------------------------


class ReconstructionEvaluator:
    """rFID, PSNR, SSIM and LPIPS of reconstructions against a fixed reference set, streamed, with their errors.

    reference: the N reference images as a (N, 3, H, W) tensor, or as an iterable of (B, 3, H, W)
    batches with ``n`` given. Only their FID statistics (and per-image features, for the bootstrap)
    are kept (``reference_features``: computed once per (key, resolution, n), then read from the
    cache, when one batch is read for its resolution). ``evaluate_pairs`` takes (reference,
    reconstruction) batch pairs and accumulates the Inception feature moments and per-image values,
    so memory grows with N only by the features kept for the bootstrap (up to ``FEATURES_KEEP_MAX``
    images; 50k ImageNet images at 256 px are ~39 GB of float32 per set); ``evaluate(recon)`` does
    the same on a tensor reference. rfid_resamples: bootstrap resamples for rFID's standard error
    (0: none), drawn with rfid_seed.
    """

    def __init__(
        self,
        reference: Tensor | Iterable[Tensor],
        key: str,
        *,
        n: int | None = None,  # the number of reference images: required for an iterable of batches
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        cache_dir: Path | None = None,
        lpips_net: str = "alex",
        fid_weights: Path | None = None,
        fid_feature: int = 2048,  # pool3, the standard; the smaller taps only for quick checks
        rfid_resamples: int = 200,  # ~1 s at N = 300 on one busy CPU core: small against the Inception passes
        rfid_seed: int = 0,  # fixed: every trial of a sweep resamples the same images
        inception_runtime: str = "auto",  # INCEPTION_RUNTIMES: auto = ONNX Runtime on CPU, PyTorch on CUDA
    ):
        self.reference: Tensor | None = None
        if isinstance(reference, Tensor):
            if reference.dim() != 4 or reference.shape[0] < 2:
                raise ConfigError(
                    f"evaluation reference {key!r}: expected (N>=2, 3, H, W) images, got {tuple(reference.shape)}"
                )
            if not reference.is_floating_point():
                raise ConfigError(
                    f"evaluation reference {key!r}: expected float images in [0, 1], got {reference.dtype}"
                )
            if n is not None and n != len(reference):
                raise ConfigError(f"evaluation reference {key!r}: n={n} but {len(reference)} images were given")
            self.reference = reference.detach().cpu()
            n = len(self.reference)
        elif n is None or n < 2:
            raise ConfigError(f"evaluation reference {key!r}: batches of images need n >= 2, got n={n}")
        if batch_size < 1:
            raise ConfigError(f"evaluation batch_size={batch_size}: expected >= 1")
        if rfid_resamples < 0 or rfid_resamples == 1:
            raise ConfigError(f"evaluation rfid_resamples={rfid_resamples}: expected 0 (no rFID error) or >= 2")
        self.n = n
        self.key = key
        self.batch_size = batch_size
        self.rfid_resamples = rfid_resamples
        self.rfid_seed = rfid_seed
        self.device = torch.device(device)
        self.inception = load_fid_inception(fid_weights, fid_feature, device=self.device, runtime=inception_runtime)
        self.lpips = load_lpips(lpips_net, device=self.device)
        # Shared work: computed once per (key, resolution, n), then read from the cache.
        self.mu_real, self.sigma_real, self.features_real = reference_features(
            reference, key, n, cache_dir, extractor=self.inception, batch_size=batch_size
        )

    @torch.no_grad()
    def evaluate(self, recon: Tensor) -> dict[str, float | str]:
        """recon: (N, 3, H, W) in [0, 1], aligned one-to-one with a tensor reference."""
        if self.reference is None:
            raise ValueError(f"evaluation {self.key!r}: the reference was streamed; use evaluate_pairs")
        if tuple(recon.shape) != tuple(self.reference.shape):
            raise ValueError(
                f"reconstructions {tuple(recon.shape)} must match the reference {tuple(self.reference.shape)}"
            )
        return self.evaluate_pairs(zip(self.reference.split(self.batch_size), recon.split(self.batch_size)))

    @torch.no_grad()
    def evaluate_pairs(self, pairs: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float | str]:
        """pairs: (reference, reconstruction) batches, each (B, 3, H, W) in [0, 1], aligned one-to-one;
        together the N reference images, in the order their statistics were computed from.

        Returns rfid, psnr (dB), ssim, lpips (PSNR, SSIM, LPIPS: means of per-image values) with their
        standard errors rfid_se, psnr_se, ssim_se, lpips_se; rfid_se_method ("bootstrap-gram",
        "bootstrap-cov" or "none": ``fid_bootstrap``; none without per-image features or resamples)
        and rfid_se_resamples; eval_seconds and images_per_s.
        """
        t0 = time.perf_counter()
        dim = self.inception.num_features
        moments = _FeatureMoments(dim)
        # The raw features, for the bootstrap and, while there are at most D of them, for the (N, N)
        # route of frechet_distance_to_features (exact, and cheaper than a (D, D) one).
        kept: list[Tensor] | None = [] if self.n <= FEATURES_KEEP_MAX else None
        per_image: list[Tensor] = []  # (3, B) each: PSNR, SSIM, LPIPS
        with Progress(self.n, f"eval {self.key}", log, unit="images") as bar:
            for ref, recon in pairs:
                if tuple(recon.shape) != tuple(ref.shape):
                    raise ValueError(f"a reconstruction batch {tuple(recon.shape)} must match its reference "
                                     f"batch {tuple(ref.shape)}")
                for y, x in zip(ref.split(self.batch_size), recon.split(self.batch_size)):
                    if moments.n + len(x) > self.n:
                        raise ValueError(f"evaluation {self.key!r}: more than the n={self.n} reference images")
                    x = x.to(self.device).float().clamp(0, 1)  # (B, 3, H, W)
                    y = y.to(self.device).float()  # (B, 3, H, W)
                    feats = self.inception(x)  # (B, D) float32
                    moments.update(feats)
                    if kept is not None:
                        kept.append(feats.cpu())
                    per_image.append(torch.stack([
                        peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)),
                        structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"),
                        self.lpips(x, y),
                    ]).double().cpu())  # (3, B)
                    bar.update(x.shape[0])
        if moments.n != self.n:
            raise ValueError(f"evaluation {self.key!r}: {moments.n} reconstructions for n={self.n} reference images")
        fake = torch.cat(kept) if kept is not None else None  # (N, D)
        if fake is not None and self.n <= dim:
            rfid = frechet_distance_to_features(self.mu_real, self.sigma_real, fake)
        else:
            rfid = frechet_distance(self.mu_real, self.sigma_real, *moments.stats())
        t_boot = time.perf_counter()
        if fake is not None and self.features_real is not None and self.rfid_resamples > 0:
            replicates, method = fid_bootstrap(self.features_real, fake, self.rfid_resamples, self.rfid_seed)
            rfid_se = float(replicates.std(ddof=1))
        else:
            replicates, method, rfid_se = np.empty(0), "none", float("nan")
        t_boot = time.perf_counter() - t_boot
        seconds = time.perf_counter() - t0
        log.info("evaluated %d images in %.1fs (%.1f images/s; rFID bootstrap %.1fs): rFID %.3f +- %.3f", self.n,
                 seconds, self.n / seconds, t_boot, rfid, rfid_se)
        values = torch.cat(per_image, 1)  # (3, N)
        psnr, ssim, lpips = values.mean(1).tolist()
        psnr_se, ssim_se, lpips_se = (standard_error(v) for v in values)
        return {
            "rfid": rfid,
            "rfid_se": rfid_se,  # std of the paired-bootstrap rFIDs
            "rfid_se_method": method,
            "rfid_se_resamples": len(replicates),
            "psnr": psnr,  # mean of per-image PSNR (dB)
            "psnr_se": psnr_se,  # standard error of that mean (nan when every image is identical: PSNR inf)
            "ssim": ssim,
            "ssim_se": ssim_se,
            "lpips": lpips,
            "lpips_se": lpips_se,
            "eval_seconds": seconds,
            "images_per_s": self.n / seconds,
        }

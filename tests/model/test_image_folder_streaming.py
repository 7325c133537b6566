"""Image folders stream through DataLoaders: the same batches, losses, checkpoints and metrics as the
same real images stacked in memory, with and without loader workers, never fetching the whole split."""

from __future__ import annotations

import copy
import multiprocessing as mp
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import _compute_fid

from model import DECODER_PRESETS, ENCODER_PRESETS, DRoRAE, DRoRAEConfig, FeatureSet, PhaseConfig, run_phase
from model.data import ImageBatches, fashion_mnist, head, image_folder, loader_workers, make_loader, stack_images
from model.train import _Batches, _BatchSampler, validation_l1

N_TRAIN, N_VAL = 192, 72


def write_image_folder(root, n_train: int = N_TRAIN, n_val: int = N_VAL):
    """Real Fashion-MNIST images (32 px) as ``root/{train,val}/<class>/<index>.png``."""
    from PIL import Image

    for split, n in (("train", n_train), ("val", n_val)):
        x, y = fashion_mnist(split, 32, limit=n)
        pixels = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3), exact: x = k / 255
        for i, (img, label) in enumerate(zip(pixels, y.tolist())):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(train, val) ImageFolder Datasets of real images, and the same images stacked in memory."""
    root = write_image_folder(tmp_path_factory.mktemp("imagefolder"))
    train, val = image_folder("train", 32, str(root)), image_folder("val", 32, str(root))
    return train, val, stack_images(train), stack_images(val)


# Two DataLoader worker processes (each imports torch) are slow: make test-fast runs the no-worker path only.
@pytest.fixture(params=[1, pytest.param(2, marks=pytest.mark.slow)], ids=["no-workers", "2-workers"])
def threads(request):
    """torch threads, which set ``loader_workers()``: 1 -> none, 2 -> two worker processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield loader_workers()
    torch.set_num_threads(before)


@pytest.fixture
def noisy_rae():
    """The tiny model with h = 16 and a noise-augmented decoder: phase 1 draws from torch's global RNG."""
    torch.manual_seed(0)
    enc = replace(ENCODER_PRESETS["tiny"], weights="none")
    dec = replace(DECODER_PRESETS["tiny"], noise_tau=0.5)
    return DRoRAE.from_config(DRoRAEConfig(encoder=enc, decoder=dec, expert_hidden=16))


class Counting(torch.utils.data.Dataset):
    """A Dataset that counts its ``__getitem__`` calls, also in DataLoader worker processes."""

    def __init__(self, ds):
        self.ds, self.calls = ds, mp.Value("l", 0)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        with self.calls.get_lock():
            self.calls.value += 1
        return self.ds[i]


def _curve(model, phase, cfg, train, val, **kw):
    seen = []
    out = run_phase(model, phase, cfg, train, val, seen.append, **kw)
    losses = [m["loss"] for m in seen if "loss" in m]
    return losses, out["val_l1"], {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_image_folder_holds_the_real_images_losslessly(folder):
    train, _, stacked, _ = folder
    x, y = fashion_mnist("train", 32, limit=N_TRAIN)
    order = sorted(range(N_TRAIN), key=lambda i: (int(y[i]), i))  # ImageFolder: by class, then by file name
    assert len(train) == N_TRAIN
    assert torch.equal(stacked, x[order])


def test_batch_sampler_yields_the_batches_of_the_training_loop():
    batches = _Batches(range(50), 16, seed=3)
    for _ in range(2):
        batches.next_indices()  # mid-epoch: the sampler starts from the state now
    sampler = _BatchSampler(batches, 7)  # 7 batches of 16 from 50 images: across two epoch boundaries
    expected = [batches.next_indices().tolist() for _ in range(7)]
    assert list(sampler) == expected and len(sampler) == 7
    assert list(sampler) == expected  # re-iterable, from the same state


def test_a_loader_draws_nothing_from_the_global_rng(folder):
    train, *_ = folder
    torch.manual_seed(5)
    state = torch.get_rng_state()
    next(iter(make_loader(train, 8)))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("phase", [1, 2])
def test_streamed_phase_trains_on_the_same_batches_as_the_stacked_images(folder, noisy_rae, threads, phase):
    train, val, train_x, val_x = folder
    # 6 steps of 48 from 192 images: across an epoch boundary, so the reshuffle is streamed too
    cfg = PhaseConfig(steps=6, batch_size=48, lr=3e-3, log_every=1, eval_every=4, val_batch_size=32, seed=1)
    model = copy.deepcopy(noisy_rae)
    stacked = _curve(noisy_rae, phase, cfg, train_x, val_x)
    streamed = _curve(model, phase, cfg, train, val)
    assert len(streamed[0]) == 6
    np.testing.assert_allclose(streamed[0], stacked[0], rtol=1e-5)
    assert streamed[1] == pytest.approx(stacked[1], rel=1e-5)
    for k, v in stacked[2].items():
        torch.testing.assert_close(streamed[2][k], v, rtol=1e-4, atol=1e-6)


def test_interrupted_streamed_phase_resumes_to_the_uninterrupted_run(folder, noisy_rae, threads, tmp_path):
    train, val, _, _ = folder
    cfg = PhaseConfig(steps=8, batch_size=32, lr=3e-3, checkpoint_every=3, log_every=1, val_batch_size=36)
    initial = copy.deepcopy(noisy_rae)
    ckpt = tmp_path / "phase1.pt"

    def stop_after_5(metrics):
        if metrics.get("step") == 5 and "loss" in metrics:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the loader has prefetched past step 5: not what is saved
        run_phase(noisy_rae, 1, cfg, train, val, stop_after_5, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    resumed = _curve(noisy_rae, 1, cfg, train, val, checkpoint=ckpt)
    assert len(resumed[0]) == 5  # steps 4..8 only
    whole = _curve(initial, 1, cfg, train, val)
    np.testing.assert_allclose(resumed[0], whole[0][3:], rtol=1e-5)
    assert resumed[1] == pytest.approx(whole[1], rel=1e-5)
    for k, v in whole[2].items():
        torch.testing.assert_close(resumed[2][k], v, rtol=1e-4, atol=1e-6)


def test_a_streamed_phase_fetches_only_the_images_it_trains_on(folder, tiny_model, threads, monkeypatch):
    import model.data

    def no_stacking(*a, **k):
        raise AssertionError("stack_images called during training")

    monkeypatch.setattr(model.data, "stack_images", no_stacking)
    train, val, _, _ = folder
    counted_train, counted_val = Counting(train), Counting(head(val, 20))
    cfg = PhaseConfig(steps=3, batch_size=16, val_batch_size=8)
    run_phase(tiny_model, 2, cfg, counted_train, counted_val)
    assert counted_train.calls.value == 3 * 16  # the sampler ends with the phase: no prefetch past it
    assert counted_val.calls.value == 20


@pytest.mark.slow  # encodes and reconstructs the folder twice, streamed and stacked
def test_features_and_reconstructions_of_a_dataset_equal_the_stacked_ones(folder, tiny_model):
    _, val, _, val_x = folder
    streamed, stacked = FeatureSet.encode(tiny_model, val, batch_size=32), FeatureSet.encode(tiny_model, val_x)
    for name in ("images", "layers", "base"):
        torch.testing.assert_close(getattr(streamed, name), getattr(stacked, name), rtol=0, atol=0)
    assert validation_l1(tiny_model, val, 16) == pytest.approx(validation_l1(tiny_model, val_x, 16), rel=1e-6)


# --- the streaming evaluator ------------------------------------------------------------------


def _degrade(x):
    """A deterministic, per-image 'reconstruction': blurred by 2x2 averaging."""
    return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2)


@pytest.mark.slow  # two evaluations through the FID Inception and LPIPS
@pytest.mark.parametrize("n", [24, 72], ids=["features-route", "moments-route"])  # N <= D and N > D (D = 64)
def test_streamed_evaluation_equals_the_stacked_one(folder, offline_weights, tmp_path, n):
    from model.metrics import ReconstructionEvaluator, load_fid_inception, load_lpips

    _, val, _, val_x = folder
    ds, ref = head(val, n), val_x[:n]
    recon = _degrade(ref)

    # stacked, computed independently: whole tensors through the Inception, torch.cov, torchmetrics' FID
    inception = load_fid_inception(feature=64)
    with torch.no_grad():
        f_ref, f_rec = inception(ref).double(), inception(recon).double()
        lpips = load_lpips("alex")(recon, ref).mean().item()
    rfid = _compute_fid(f_ref.mean(0), torch.cov(f_ref.T), f_rec.mean(0), torch.cov(f_rec.T)).item()
    psnr = peak_signal_noise_ratio(recon, ref, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean().item()
    ssim = structural_similarity_index_measure(recon, ref, data_range=1.0).item()

    # streamed: the reference statistics and the (reference, reconstruction) pairs batch by batch from the folder
    ev = ReconstructionEvaluator(ImageBatches(ds, 16), "folder", n=n, batch_size=16, cache_dir=tmp_path,
                                 fid_feature=64)
    assert ev.reference is None
    got = ev.evaluate_pairs((x, _degrade(x)) for x in ImageBatches(ds, 20))  # other batches than the evaluator's
    # FID is a small difference of large traces: float32 features from other batch sizes move it by ~1e-7 of those
    scale = torch.cov(f_ref.T).trace().item() + torch.cov(f_rec.T).trace().item()
    assert got["rfid"] == pytest.approx(rfid, abs=1e-6 * scale)
    assert got["psnr"] == pytest.approx(psnr, rel=1e-6)
    assert got["ssim"] == pytest.approx(ssim, rel=1e-5)
    assert got["lpips"] == pytest.approx(lpips, rel=1e-5)
    with pytest.raises(ValueError, match=f"2 reconstructions for n={n}"):
        ev.evaluate_pairs([(ref[:2], recon[:2])])

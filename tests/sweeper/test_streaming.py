"""An image-folder sweep without a feature cache (the paper specs' path) streams: the shared work,
a trial's data and its evaluation read Datasets batch by batch and never stack a split."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset

from model import ENCODER_PRESETS, DRoRAE, DRoRAEConfig, assets
from model import data as model_data
from model.data import fashion_mnist, image_folder, stack_images
from model.errors import AssetError
from sweeper.plan import build_plan
from sweeper.shared import Shared
from sweeper.spec import load_spec
from sweeper.splits import splits_of

N_TRAIN, N_VAL, N_EVAL = 96, 24, 8


@pytest.fixture
def folder_plan(tmp_path, tiny_raw, write_spec, monkeypatch):
    """The tiny spec on an ImageFolder of real images with ``feature_cache.max_gb: 0``; caches under tmp_path."""
    from PIL import Image

    for name in ("fid", "lpips"):  # the real weights, where they are, while the caches go to tmp_path
        try:
            path = assets.fid_inception_weights() if name == "fid" else assets.lpips_weights("alex")
        except AssetError:
            assets.fetch(only={name})
            path = assets.fid_inception_weights() if name == "fid" else assets.lpips_weights("alex")
        monkeypatch.setenv("DRORAE_FID_WEIGHTS" if name == "fid" else "DRORAE_LPIPS_ALEX_WEIGHTS", str(path))
    root = tmp_path / "images"
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        x, y = fashion_mnist(split, 32, limit=n)
        for i, (img, label) in enumerate(zip((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), y.tolist())):
            (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"c{label}" / f"{i:03d}.png")
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path / "cache"))
    tiny_raw.update(encoder={"preset": "tiny", "weights": "none"}, feature_cache={"max_gb": 0},
                    data={"name": "imagefolder", "root": str(root), "resolution": 32, "num_val": N_VAL},
                    eval={"n_images": N_EVAL, "batch_size": 4}, phase1={"steps": 4, "batch_size": 16})
    return build_plan(load_spec(write_spec(tiny_raw), [f"results_dir={tmp_path / 'results'}",
                                                       f"cache_dir={tmp_path / 'cache'}"]))


@pytest.fixture
def no_stacking(monkeypatch):
    """Fail on any stacking of a split through ``model.data.stack_images``."""
    def refuse(*a, **k):
        raise AssertionError("a split was stacked into one tensor")

    monkeypatch.setattr(model_data, "stack_images", refuse)


def _shared(plan, decoder_path="") -> Shared:
    return Shared(encoder_checkpoint=None, decoder_path=decoder_path, decoder_state_path="", phase1={},
                  features_path=None, fid_key=plan.data.key, splits=splits_of(plan.spec, N_TRAIN, N_VAL), seconds={})


def _model():
    torch.manual_seed(0)
    return DRoRAE.from_config(DRoRAEConfig(encoder=replace(ENCODER_PRESETS["tiny"], weights="none"),
                                           expert_hidden=8)).eval()


def test_load_data_without_a_feature_cache_returns_the_folders_datasets(folder_plan, no_stacking):
    from sweeper.trial import load_data

    train, select, val = load_data(folder_plan, _shared(folder_plan), (5,))
    assert isinstance(train, Dataset) and not isinstance(train, torch.Tensor) and len(train) == N_TRAIN
    assert isinstance(val, Subset) and list(val.indices) == list(range(N_EVAL))  # the first eval.n_images
    assert isinstance(select, Subset) and list(select.indices) == list(range(N_EVAL, N_VAL))  # the rest
    assert val[0][0].shape == (3, 32, 32)


@pytest.mark.slow  # evaluates twice (streamed and stacked) through the FID Inception
def test_evaluate_streams_reconstructions_and_equals_the_stacked_evaluation(folder_plan, tmp_path, monkeypatch):
    from model.metrics import ReconstructionEvaluator
    from model.train import reconstruct
    from sweeper.trial import evaluate, load_data

    net = _model()
    val = load_data(folder_plan, _shared(folder_plan), ()).evaluate
    originals = stack_images(val)  # the same images, stacked: the expected values
    recons = torch.cat([r for _, r in reconstruct(net, originals)])

    monkeypatch.setattr(model_data, "stack_images", lambda *a, **k: pytest.fail("stacked"))
    monkeypatch.setattr(ReconstructionEvaluator, "evaluate", lambda *a, **k: pytest.fail("tensor API"))
    got = evaluate(net, val, folder_plan, _shared(folder_plan), "cpu", tmp_path)
    monkeypatch.undo()

    ev = folder_plan.spec.eval
    expected = ReconstructionEvaluator(originals, folder_plan.data.key, batch_size=ev.batch_size,
                                       lpips_net=ev.lpips_net).evaluate(recons)  # statistics from the cache
    for key in ("psnr", "ssim", "lpips"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert got["rfid"] == pytest.approx(expected["rfid"], rel=1e-5, abs=1e-6)
    from PIL import Image

    with Image.open(tmp_path / "reconstructions.png") as grid:  # 2 rows (originals, reconstructions) of 8
        assert grid.size == (N_EVAL * 33 + 1, 2 * 33 + 1)


@pytest.mark.slow  # the shared work of a sweep: FID statistics and phase 1
def test_prepare_streams_the_fid_statistics_and_phase_1(folder_plan, no_stacking, monkeypatch):
    import sweeper.shared

    fetched = {}

    def counted_split(cfg, split):  # the real split, counting the images read from it (in any process)
        ds, calls = image_folder(split, cfg.resolution, cfg.root), mp.Value("l", 0)
        fetched[split] = calls

        class Counting(Dataset):
            def __len__(self):
                return len(ds)

            def __getitem__(self, i):
                with calls.get_lock():
                    calls.value += 1
                return ds[i]

        return Counting()

    monkeypatch.setattr(sweeper.shared, "load_split", counted_split)
    shared = sweeper.shared.prepare(folder_plan)
    assert shared.features_path is None  # max_gb: 0, trials encode on the fly
    assert Path(shared.decoder_path).is_file()
    assert fetched["train"].value == 4 * 16  # phase 1's batches, no more
    # the FID statistics of the evaluation split (here computed) and phase 1's validation on the selection split
    assert fetched["val"].value == N_EVAL + (N_VAL - N_EVAL)
    assert len(list((assets.cache_root() / "fid_stats").glob(f"{shared.fid_key}-*.npz"))) == 1


def test_an_injected_nan_fault_fills_a_streamed_split_without_stacking_it(folder_plan, no_stacking):
    from sweeper.trial import _filled, load_data

    train = load_data(folder_plan, _shared(folder_plan), ()).train
    bad = _filled(train, float("nan"))
    image, label = bad[3]
    assert len(bad) == N_TRAIN and image.shape == (3, 32, 32) and image.isnan().all() and label == train[3][1]

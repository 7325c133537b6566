"""One Ray Tune trial: phase 2 (and 3) of one capacity point, then its rFID evaluation.

The trainable is a thin adapter around ``model``'s plain training functions: it builds the model
from the shared artifacts, forwards the training curve to ``tune.report``, turns the phase
checkpoints into Tune checkpoints (so a failed trial retries from its last one and an interrupted
sweep resumes) and evaluates the result. It knows nothing of MLflow: the driver tracks.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import TensorDataset

from model import DRoRAE, DRoRAEConfig, FeatureSet, PhaseConfig, run_phase
from model.cost import count_reconstruction, device_description, phase_flops
from model.data import ImageBatches, load_split
from model.features import load_feature_cache
from model.train import lr_factor, reconstruct, validation_l1

from .splits import split
from .trial_config import Control, TrialConfig

log = logging.getLogger(__name__)


def _device(gpu: float) -> torch.device:
    return torch.device("cuda" if gpu > 0 and torch.cuda.is_available() else "cpu")


def build_model(plan, shared, trial: TrialConfig, device) -> DRoRAE:
    """The trial's model: resolved encoder, phase-1 decoder, fusion of width h over its layers."""
    enc = replace(plan.encoder, checkpoint=shared.encoder_checkpoint, layers=trial.layers or None)
    model = DRoRAE.from_config(DRoRAEConfig(
        encoder=enc, decoder=plan.decoder, image_size=plan.spec.data.resolution,
        expert_hidden=trial.expert_hidden, beta_max=trial.hp.get("beta_max", plan.spec.beta_max)))
    model.decoder.load_state_dict(torch.load(shared.decoder_path, map_location="cpu", weights_only=True))
    return model.to(device)


class TrialData(NamedTuple):
    """A trial's images: what it trains on, what it chooses on, what it is reported on (``sweeper.splits``)."""

    train: object  # a FeatureSet or a Dataset; None for an evaluation that trains nothing
    select: object  # the selection split: phase validation, the search's objective, the best-trial choice
    evaluate: object  # the evaluation split: rFID, PSNR, SSIM, LPIPS, and nothing else


def load_data(plan, shared, layers, with_train: bool = True) -> TrialData:
    """The trial's three image sets: FeatureSets from the cache, or Datasets of the images to encode on the fly.

    The Datasets are never stacked: an ImageFolder (ImageNet) streams through DataLoaders,
    Fashion-MNIST stays a TensorDataset. ``with_train=False``: no training images (an evaluation
    need not list 1.28M training files) and, when it is held out of them, no selection split.
    """
    if shared.features_path is not None:
        train, val = load_feature_cache(shared.features_path)
        if layers:
            train, val = train.select(layers), val.select(layers)
    else:
        train = load_split(plan.data, "train") if with_train or shared.splits.source == "train" else None
        val = load_split(plan.data, "val")
    train, select, evaluate = split(shared.splits, train, val)
    return TrialData(train if with_train else None, select if with_train else None, evaluate)


GRID_IMAGES = 16  # originals and reconstructions kept for the PNG grid


def evaluate(model: DRoRAE, val, plan, shared, device, out_dir: Path) -> dict:
    """rFID, PSNR, SSIM, LPIPS (and their standard errors) on the sweep's evaluation split; a reconstruction grid PNG.

    Reconstructions stream into the evaluator batch by batch; only the first ``GRID_IMAGES``
    originals and reconstructions are kept, for the grid.
    """
    from torchvision.utils import save_image

    from model.metrics import ReconstructionEvaluator

    ev = plan.spec.eval
    originals, recons = [], []

    def pairs():  # on the model's device, as the evaluator wants them; copies of the grid's few only
        kept = 0
        for images, recon in reconstruct(model, val, batch_size=ev.batch_size * 4):
            if kept < GRID_IMAGES:
                originals.append(images[:GRID_IMAGES - kept].to("cpu", copy=True))
                recons.append(recon[:GRID_IMAGES - kept].to("cpu", copy=True))
                kept += len(originals[-1])
            yield images, recon

    # The reference statistics are the shared work's (a cache hit reads one batch, for its resolution).
    reference = ImageBatches(val.image_tensor() if isinstance(val, FeatureSet) else val, ev.batch_size)
    evaluator = ReconstructionEvaluator(reference, shared.fid_key, n=len(val), batch_size=ev.batch_size,
                                        device=device, lpips_net=ev.lpips_net,
                                        inception_runtime=ev.inception_runtime)
    metrics = evaluator.evaluate_pairs(pairs())
    k = sum(len(o) for o in originals)
    save_image(torch.cat([*originals, *recons]), out_dir / "reconstructions.png", nrow=k, padding=1)
    return metrics


def _phase_cfg(base, hp: dict, seed: int):
    """``base`` with the searched hyperparameters ``hp`` applied."""
    changes = {k: v for k, v in hp.items() if k in ("lr", "weight_decay", "warmup_steps", "batch_size")}
    return replace(base, seed=seed, **changes)


def decoder_only_phase(plan, seed: int) -> PhaseConfig:
    """The decoder_only control: phase 1 continued, for as many decoder steps as the fusion path trains.

    Equal budget: phase 2's steps plus phase 3's, at phase 2's batch size (the images the fusion path's
    phase 2 sees per step). Like for like: phase 1's own recipe (its loss terms, the adversarial one
    included, already on where phase 1 had switched it on), continued from its saved optimizer
    moments and discriminator (``warm_start``) at the rate where phase 1 ended, held constant: no
    fresh optimizer restarting at phase 1's peak rate.
    """
    p1, p2, p3 = plan.phase1, plan.phase2, plan.phase3
    loss = replace(p1.loss, adv_start_step=max(0, p1.loss.adv_start_step - p1.steps))
    return replace(p1, steps=p2.steps + (p3.steps if p3 is not None else 0), batch_size=p2.batch_size,
                   lr=p1.lr * lr_factor(p1, p1.steps - 1), warmup_steps=0, min_lr_ratio=1.0, loss=loss, seed=seed,
                   log_every=p2.log_every, eval_every=p2.eval_every, checkpoint_every=p2.checkpoint_every)


def trial_phases(trial: TrialConfig, plan) -> list[tuple[int, PhaseConfig]]:
    """The phases a trial trains, with their configs, in order (``phases_of`` its control, hyperparameters, seed)."""
    return phases_of(plan, trial.control, trial.hp, trial.seed)


def phases_of(plan, control: Control | None, hp: dict | None = None, seed: int = 0) -> list[tuple[int, PhaseConfig]]:
    """The phases a trial of ``control`` (None: a grid point) trains with searched ``hp``, in order.

    A grid point and the last_layer control: phase 2 (fusion) [+ phase 3]; decoder_only: phase 1
    continued (``decoder_only_phase``); rae: nothing, the shared phase-1 decoder is evaluated as it is.
    """
    if control is Control.RAE:
        return []
    if control is Control.DECODER_ONLY:
        return [(1, decoder_only_phase(plan, seed))]
    phases = [(2, _phase_cfg(plan.phase2, hp or {}, seed))]
    if plan.phase3 is not None:
        phases.append((3, replace(plan.phase3, seed=seed)))
    return phases


def train_trial(trial: TrialConfig, plan, shared, report, checkpoint_dir: Path, save_checkpoint,
                data=load_data) -> dict:
    """Run one trial; ``report(metrics)`` gets the curve, ``save_checkpoint(step)`` persists ``checkpoint_dir``.

    The same function serves the grid and the controls (``trial_phases``). ``data(plan, shared, layers)``
    gives the ``TrialData``: ``load_data``, or what a wrapper (``with_faults``) makes of it. Running out of
    memory is a MemoryError that says what to change.
    """
    device = _device(plan.spec.resources.gpu)
    torch.manual_seed(trial.seed)
    model = build_model(plan, shared, trial, device)
    try:
        return _train(trial, plan, shared, model, data(plan, shared, trial.layers), device, report, checkpoint_dir,
                      save_checkpoint)
    except RuntimeError as err:  # torch.OutOfMemoryError (CUDA) is one too
        text = str(err)
        if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text:
            detail = text.split("DefaultCPUAllocator: ")[-1].splitlines()[0][:200]
            raise MemoryError(f"out of memory in trial {trial.trial_id} on {device}: {detail}; lower "
                              "phase2.batch_size or give each trial more memory (resources)") from err
        raise


# Counted FLOPs of this process's trials, by what determines them (model sizes, fused layers, phase config, the
# kind of data): the trials of a unit (a search's) that run in one process count once; another process counts
# again: one step on 4 images per phase and one forward on 4 images (model.cost), under a second on the tiny
# CPU models (not measured on the paper's).
_FLOPS: dict[tuple, float] = {}


def _counted(key: tuple, count, *args) -> float:
    """``count(*args)``, once per process for each ``key``."""
    if key not in _FLOPS:
        _FLOPS[key] = count(*args)
    return _FLOPS[key]


def _cost_key(model, trial, *what) -> tuple:
    """What a trial's FLOPs depend on: the model's sizes, its fused layers, its data's kind and ``what``."""
    enc = model.encoder
    return (repr(enc.arch), enc.layers, repr(model.decoder.config), model.decoder.patch_size,
            None if model.fusion is None else model.fusion.config.hidden, trial.control, *what)


def eval_flops(model, evaluate, trial: TrialConfig) -> float:
    """Model FLOPs of the evaluation's reconstructions of the ``evaluate`` images (``model.cost``; no Inception)."""
    key = _cost_key(model, trial, "eval", type(evaluate).__name__, len(evaluate))
    return _counted(key, lambda: count_reconstruction(model, evaluate).total * len(evaluate))


def _train(trial, plan, shared, model, data: TrialData, device, report, checkpoint_dir, save_checkpoint) -> dict:
    start = time.perf_counter()
    metrics: dict = {"train_steps": 0, "train_flops": 0.0, "device": device_description(device)}
    phases = trial_phases(trial, plan)
    for phase, cfg in phases:
        key = _cost_key(model, trial, phase, cfg.batch_size, cfg.steps, repr(cfg.loss), type(data.train).__name__)
        metrics["train_flops"] += _counted(key, phase_flops, model, phase, cfg, data.train)
        warm = shared.decoder_state_path if trial.control is Control.DECODER_ONLY else None
        result = run_phase(model, phase, cfg, data.train, data.select, report=report,
                           checkpoint=checkpoint_dir / f"phase{phase}.pt", on_checkpoint=save_checkpoint,
                           warm_start=warm)
        metrics["val_l1"] = result["val_l1"]  # on the selection split: what the search and the best-trial choice read
        metrics[f"phase{phase}_seconds"] = result["train_seconds"]
        metrics["train_steps"] += cfg.steps
    if not phases:
        metrics["val_l1"] = validation_l1(model, data.select, phase=1)
    metrics["train_seconds"] = sum(v for k, v in metrics.items() if k.endswith("_seconds"))
    if trial.evaluate:
        metrics.update(evaluate(model, data.evaluate, plan, shared, device, checkpoint_dir))
        metrics["eval_flops"] = eval_flops(model, data.evaluate, trial)
    metrics["wall_seconds"] = time.perf_counter() - start
    torch.save(model.fusion.state_dict() if model.fusion is not None else {}, checkpoint_dir / "fusion.pt")
    return metrics


# --- deliberate faults (spec faults), wrapped around a trial ---------------------------------


class _FilledImages(torch.utils.data.Dataset):
    """A Dataset of (image, label) whose images are all ``value`` (a fault injected into a streamed split)."""

    def __init__(self, ds, value: float):
        self.ds, self.value = ds, value

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        image, *rest = self.ds[i]
        return (torch.full_like(image, self.value), *rest)


def _filled(train, value: float):
    """``train`` (a FeatureSet, a TensorDataset or another Dataset) with every image set to ``value``."""
    if isinstance(train, FeatureSet):
        return replace(train, images=torch.full_like(train.images, value))
    if isinstance(train, TensorDataset):
        return TensorDataset(torch.full_like(train.tensors[0], value), *train.tensors[1:])
    return _FilledImages(train, value)


def with_faults(train_fn, faults):
    """``train_fn`` (``train_trial``) with the deliberate faults of spec ``faults`` in the trials of their units.

    Real failures, for testing the sweep's handling of them: nan_loss / inf_loss fill the unit's
    training images with NaN / +inf (a real non-finite loss); raise_error raises once the data is
    loaded; oom asks the allocator for 2^50 bytes there (a real allocation failure, reported as any).
    """

    def faulty(trial: TrialConfig, plan, shared, report, checkpoint_dir: Path, save_checkpoint, data=load_data):
        unit = trial.unit_id

        def faulty_data(plan, shared, layers):
            loaded = data(plan, shared, layers)
            train = loaded.train
            for bad, value in (("nan_loss", float("nan")), ("inf_loss", float("inf"))):
                if unit in getattr(faults, bad):
                    train = _filled(train, value)
            if unit in faults.raise_error:
                raise RuntimeError(f"injected fault in {unit} (spec faults.raise_error)")
            if unit in faults.oom:  # a batch far too large for the machine
                torch.empty(1 << 50, dtype=torch.uint8, device=_device(plan.spec.resources.gpu))
            return loaded._replace(train=train)

        return train_fn(trial, plan, shared, report, checkpoint_dir, save_checkpoint, data=faulty_data)

    return faulty


def _process_age() -> float | None:
    """Seconds since this process started (Linux), or None where /proc is not there."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return time.time() - (boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, StopIteration, ValueError):
        return None


_STARTED: list[bool] = []  # whether this process has run a trial before (Tune may reuse actors)


def tune_trainable(config: dict, plan=None, shared=None):
    """The function Ray Tune runs: train_trial (with the spec's faults) wired to ``tune.report`` and Tune checkpoints.

    Besides the trial's metrics it reports what orchestration cost it: ``report_seconds``, the time
    training waited in ``tune.report`` (the driver handles each result before training goes on), and
    ``startup_seconds``, the age of a new actor process when the trial began (0 for a reused one).
    """
    import ray
    from ray import tune

    trial = TrialConfig.from_tune(config)
    startup = 0.0 if _STARTED else (_process_age() or 0.0)
    _STARTED.append(True)
    torch.set_num_threads(max(1, int(plan.spec.resources.cpu)))
    work = Path(tempfile.mkdtemp(prefix="drorae-trial-"))
    try:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                shutil.copytree(d, work, dirs_exist_ok=True)
        node = ray.get_runtime_context().get_node_id()
        last: dict = {}
        waited = [0.0]

        def timed_report(metrics: dict, checkpoint=None):
            t = time.perf_counter()
            tune.report(metrics, checkpoint=checkpoint)
            waited[0] += time.perf_counter() - t

        def report(m: dict):
            if "loss" in m or "val_l1" in m:
                last.update({k: v for k, v in m.items() if isinstance(v, (int, float))})
                timed_report({**last, "node_id": node, "final": False})

        def save_checkpoint(step: int):
            timed_report({**last, "step": step, "node_id": node, "final": False},
                         checkpoint=tune.Checkpoint.from_directory(str(work)))

        done = work / "metrics.json"
        if done.exists():  # finished, but the driver died before it recorded that: report it, train nothing
            log.info("trial %s had finished: reporting its final metrics again", trial.trial_id)
            metrics = json.loads(done.read_text())
        else:
            train = with_faults(train_trial, plan.spec.faults)
            metrics = {**train(trial, plan, shared, report, work, save_checkpoint), "node_id": node,
                       "report_seconds": waited[0], "startup_seconds": startup}
            done.write_text(json.dumps(metrics))
        tune.report({**metrics, "final": True}, checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tune_evaluate_checkpoint(plan, shared, trial: TrialConfig, checkpoint) -> tuple[dict, bytes]:
    """Evaluate a finished trial from its Tune checkpoint (a searched unit's best), as a Ray task.

    The model is built from the trial's own config, its searched hyperparameters included (a
    searched ``beta_max`` bounds the correction the checkpoint's gate was trained under).
    Returns the metrics and the reconstruction grid (PNG bytes), for the driver to keep.
    """
    torch.set_num_threads(max(1, int(plan.spec.resources.cpu)))
    device = _device(plan.spec.resources.gpu)
    model = build_model(plan, shared, trial, device)
    with checkpoint.as_directory() as d:
        ckpt = Path(d)
        if model.fusion is not None:
            model.fusion.load_state_dict(torch.load(ckpt / "fusion.pt", map_location=device, weights_only=True))
        if (ckpt / "phase3.pt").exists():
            state = torch.load(ckpt / "phase3.pt", map_location=device, weights_only=True)
            model.decoder.load_state_dict(state["module"])
    model.eval()
    data = load_data(plan, shared, trial.layers, with_train=False)
    out = Path(tempfile.mkdtemp(prefix="drorae-eval-"))
    try:
        metrics = evaluate(model, data.evaluate, plan, shared, device, out)
        metrics["eval_flops"] = eval_flops(model, data.evaluate, trial)
        png = (out / "reconstructions.png").read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return metrics, png

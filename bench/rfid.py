"""rFID evaluation: Inception throughput, its share of a default trial, and what the once-per-sweep
real-image statistics save.

Side by side in one run, with the threads of one default trial:
  1. the FID reference statistics of the spec's ``eval.n_images`` real images, computed (into a
     fresh cache) as the shared work does once per sweep;
  2. one trial's evaluation (rFID, PSNR, SSIM, LPIPS of as many reconstructions), which reads
     those statistics from the cache: images/s;
  3. one whole default trial (``sweeper.trial.train_trial``, h = --hidden): the evaluation's share
     of it, and the share a per-trial recomputation of the statistics would add.

    python bench/rfid.py [--spec sweeps/default.yaml] [--hidden 128] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/default.yaml")
    ap.add_argument("--hidden", type=int, default=128, help="expert width of the timed trial")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a default trial has 1 CPU)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from model.data import load_split, stack_images
    from model.metrics import ReconstructionEvaluator, reference_stats
    from sweeper.plan import build_plan
    from sweeper.shared import prepare
    from sweeper.spec import load_spec
    from sweeper.trial import train_trial
    from sweeper.trial_config import TrialConfig

    tmp = Path(tempfile.mkdtemp(prefix="drorae-bench-rfid-"))
    plan = build_plan(load_spec(args.spec, [f"grid.expert_hidden=[{args.hidden}]", "controls.runs=[]",
                                            f"results_dir={tmp / 'results'}"]))
    ev = plan.spec.eval
    n = ev.n_images
    real = stack_images(load_split(plan.data, "val"))[:n]
    recon = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    stats_dir = tmp / "fid-stats"

    t = time.perf_counter()
    reference_stats(real, "bench", n, cache_dir=stats_dir, batch_size=ev.batch_size)
    ref_s = time.perf_counter() - t

    evaluator = ReconstructionEvaluator(real, "bench", batch_size=ev.batch_size, cache_dir=stats_dir,
                                        lpips_net=ev.lpips_net)
    t = time.perf_counter()
    evaluator.evaluate(recon)
    eval_s = time.perf_counter() - t

    shared = prepare(plan)  # cached by the sweeps (else built here once, not timed)
    unit = plan.units[0]
    work = tmp / "trial"
    work.mkdir()
    t = time.perf_counter()
    metrics = train_trial(TrialConfig.of(unit, {}, True, 0), plan, shared, lambda m: None, work, lambda s: None)
    trial_s = time.perf_counter() - t

    out = {"n_images": n, "threads": args.threads, "reference_stats_s": ref_s, "evaluation_s": eval_s,
           "images_per_s": n / eval_s, "trial_s": trial_s, "trial_eval_s": metrics["eval_seconds"],
           "eval_share": metrics["eval_seconds"] / trial_s, "recompute_share": ref_s / trial_s}
    print(f"rFID evaluation of {n} images ({args.spec}), {args.threads} thread(s):")
    print(f"  real-image statistics, once per sweep    {ref_s:6.1f} s")
    print(f"  a trial's evaluation (rFID+PSNR+SSIM+LPIPS) {eval_s:6.1f} s = {out['images_per_s']:.1f} images/s")
    print(f"  a default trial (h={args.hidden}), train + evaluate {trial_s:6.1f} s: evaluation "
          f"{out['eval_share'] * 100:.0f}% of it; recomputing the statistics per trial would add "
          f"{out['recompute_share'] * 100:.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

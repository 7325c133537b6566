"""Phase-2 trial time with cached frozen-encoder features against encoding on the fly.

Runs both side by side in one process, on the default spec's data, encoder, decoder and phase-2
budget, alternating the two modes so that machine noise hits both alike. Prints seconds and the
ratio (target: cached at least 3x faster), and beside it the most any cache can give: the cached
step plus the frozen encoder's forward alone, over the cached step.

    python bench/feature_cache.py [--hidden 128] [--steps 150] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from model import DRoRAE, DRoRAEConfig, FeatureSet, ensure_encoder_weights, train_fusion
from model.data import load_split, stack_images
from sweeper.plan import build_plan
from sweeper.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/default.yaml")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a default trial has 1 CPU)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = build_plan(load_spec(args.spec))
    enc = ensure_encoder_weights(plan.encoder, plan.data)
    model = DRoRAE.from_config(DRoRAEConfig(encoder=enc, decoder=plan.decoder, image_size=plan.spec.data.resolution,
                                            expert_hidden=args.hidden))
    train = stack_images(load_split(plan.data, "train"))
    val = stack_images(load_split(plan.data, "val"))[:256]
    t = time.perf_counter()
    cached_train, cached_val = FeatureSet.encode(model, train), FeatureSet.encode(model, val)
    encode_s = time.perf_counter() - t
    cfg = replace(plan.phase2, steps=args.steps, eval_every=0, checkpoint_every=0)
    init = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    times = {"cached": [], "on the fly": [], "encoder": []}
    batches = torch.randint(len(train), (args.steps, cfg.batch_size), generator=torch.Generator().manual_seed(0))
    for _ in range(args.repeats):
        for mode, (tr, va) in (("cached", (cached_train, cached_val)), ("on the fly", (train, val))):
            model.fusion.load_state_dict(init)
            t = time.perf_counter()
            train_fusion(model, cfg, tr, va)
            times[mode].append(time.perf_counter() - t)
        # What the cache can save at most: the frozen encoder's forward on the same number of batches.
        t = time.perf_counter()
        with torch.no_grad():
            for idx in batches:
                model.encoder(train[idx])
        times["encoder"].append(time.perf_counter() - t)
    cached, fly = statistics.median(times["cached"]), statistics.median(times["on the fly"])
    encoder = statistics.median(times["encoder"])
    bound = (cached + encoder) / cached  # the speedup if caching removed exactly the encoder's forward
    print(f"phase-2 trial, h={args.hidden}, {args.steps} steps x {cfg.batch_size} images, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"  cached features   {cached:7.1f} s   ({cached / args.steps * 1000:.0f} ms/step)")
    print(f"  encode on the fly {fly:7.1f} s   ({fly / args.steps * 1000:.0f} ms/step)")
    print(f"  encoder fwd alone {encoder:7.1f} s   ({encoder / args.steps * 1000:.0f} ms/step)")
    print(f"  speedup {fly / cached:.2f}x (target >= 3x); the most a cache can give here, (cached + encoder) / "
          f"cached: {bound:.2f}x; building the cache once took {encode_s:.1f} s for {len(train) + len(val)} images")
    if args.json:
        Path(args.json).write_text(json.dumps({"hidden": args.hidden, "steps": args.steps, "threads": args.threads,
                                               "cached_s": cached, "on_the_fly_s": fly, "speedup": fly / cached,
                                               "encoder_s": encoder, "bound": bound,
                                               "encode_once_s": encode_s}, indent=1))


if __name__ == "__main__":
    main()

"""Every benchmark of bench/, one after another, into one Markdown table (``make bench``).

Each benchmark runs as its own process (so none inherits another's threads, caches or Ray) and
writes its numbers as JSON; this script collects them into ``bench/results.md`` with the date and
the machine they came from. The ratios inside each row are measured side by side in one run.

    python bench/run_all.py [--quick] [--only rfid,bootstrap] [--out bench/results.md]

``--quick`` runs the orchestration benchmark on three widths of the default spec instead of its
whole grid (about 4 minutes instead of 20 on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} x {cpu}{mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


# name -> (command after `python`, row builder from its JSON)
def _benchmarks(quick: bool) -> dict:
    widths = "2,32,512" if quick else "spec"

    def orchestration(spec: str, target: str, limit: float | None):
        def row(r):
            ok = "n/a" if limit is None else ("yes" if r["overhead"] <= limit else "no")
            what = (f"orchestration overhead of `{spec}`" + (" (3 widths)" if quick and "default" in spec else "")
                    + ": `drorae sweep` vs a plain loop over the same trials, one at a time on all cores")
            parts = r["parts"]
            starts = next((v for k, v in parts.items() if "processes starting" in k), 0.0)
            slower = r["trial_compute_s"] / r["direct_compute_s"] - 1
            return (what, f"{r['sweep_s']:.0f} s vs {r['direct_s']:.0f} s: **{_pct(r['overhead'])}** "
                          f"(Ray start {r['ray_start_seconds']:.0f} s, shared-work lookup {r['shared_seconds']:.0f} s, "
                          f"trial processes starting {starts:.0f} s; trial compute {slower * 100:+.1f}% inside Ray; "
                          f"time outside trial compute {_pct(r['outside_compute'])})",
                    target, ok)
        return row

    return {
        "orchestration-smoke": (["bench/orchestration.py", "--spec", "sweeps/smoke.yaml", "--widths", "spec"],
                                orchestration("sweeps/smoke.yaml", "reported", None)),
        "orchestration-default": (["bench/orchestration.py", "--spec", "sweeps/default.yaml", "--widths", widths],
                                  orchestration("sweeps/default.yaml", "<= 10%", 0.10)),
        "feature-cache": (["bench/feature_cache.py"], lambda r: (
            f"phase-2 trial with cached encoder features vs encoding on the fly (h = {r['hidden']}, "
            f"{r['steps']} steps, {r['threads']} thread)",
            f"{r['cached_s']:.1f} s vs {r['on_the_fly_s']:.1f} s: **{r['speedup']:.2f}x** (the encoder's forward "
            f"alone {r['encoder_s']:.1f} s: no cache can give more than {r['bound']:.2f}x here)", ">= 3x",
            "yes" if r["speedup"] >= 3 else "no")),
        "rfid": (["bench/rfid.py"], lambda r: (
            f"rFID evaluation of {r['n_images']} images ({r['threads']} thread): throughput, share of a default "
            "trial; real-image statistics once per sweep",
            f"**{r['images_per_s']:.1f} images/s**; evaluation {_pct(r['eval_share'])} of a {r['trial_s']:.0f} s "
            f"trial; the statistics ({r['reference_stats_s']:.0f} s) per trial would add "
            f"{_pct(r['recompute_share'])}", "reported", "n/a")),
        "bootstrap": (["bench/bootstrap.py"], lambda r: (
            f"{r['B']:,} bootstrap resamples of a {r['n']}-point fit vs a loop of statsmodels fits",
            f"{r['residual_s'] * 1e3:.1f} ms vs {r['statsmodels_s']:.2f} s: **{r['speedup']:.0f}x**",
            "< 0.5 s, >= 50x", "yes" if r["residual_s"] < 0.5 and r["speedup"] >= 50 else "no")),
        "analysis-scale": (["bench/analysis_scale.py"], _analysis_scale_row),
        "adaptive-design": (["bench/adaptive_design.py", "--cost"] + (["--quick"] if quick else []), _adaptive_row),
        "gpu-throughput": (["bench/gpu_throughput.py"], _gpu_row),
        "default-sweep": (["bench/default_sweep.py"] + (["--spec", "sweeps/smoke.yaml"] if quick else []),
                          _default_sweep_row),
        "hparam-transfer": (["bench/hparam_transfer.py", "--results", str(Path(tempfile.gettempdir()) / "drorae-bench")]
                            + (["--spec", "sweeps/smoke.yaml", "--search", SMOKE_SEARCH] if quick else []),
                            _transfer_row),
    }


# --quick: the backtest on the smoke spec (about 3 minutes instead of ~25)
SMOKE_SEARCH = ("search={params: {lr: {type: loguniform, low: 3.0e-4, high: 3.0e-2}}, n_trials: 3, sampler: grid, "
                "pruner: none, transfer: law, searched: [2, 16, 128]}")


def _default_sweep_row(r: dict):
    base = [x for x in r["runs"] if x["label"] == "B"]
    new = next(x for x in r["runs"] if x["label"] == "A")
    c, q = r["checks"], r["ratios"]
    what = (f"`make sweep` of `{r['spec']}` from empty caches (the venv excluded), {r['order']}: main before "
            f"issue 17 ({base[0]['commit'][:7]}, B) vs this code ({new['commit'][:7]}, A)")
    walls = " and ".join(f"{x['wall_s']:.0f}" for x in base)
    measured = (f"{new['wall_s']:.0f} s vs {walls} s: "
                f"**{q['wall']:.2f}x** (shared work {q['shared']:.2f}x, trials {q['trials']:.2f}x); slope "
                f"{new['slope']:.3f} in B's CI [{base[0]['slope_ci'][0]:.3f}, {base[0]['slope_ci'][1]:.3f}]: "
                f"{c['slope_within_base_ci']}, A's CI excludes 0: {c['ci_excludes_zero']}; rfid_se at most "
                f"{c['rfid_se_ratio_max']:.2f}x B's")
    return what, measured, "<= 0.5x; the law unchanged in substance", "yes" if c["met"] else "no"


def _transfer_row(r: dict):
    what = (f"hyperparameter transfer on `{r['spec']}`: h = {r['held_out']} at the lr the law of h = "
            f"{', '.join(map(str, r['fitted_on']))} predicts vs the lr of its own search")
    ratio = r["search_trials_transfer"] / r["search_trials_all_searched"]
    measured = (f"lr {r['lr_predicted']:.3g} vs searched {r['lr_searched']:.3g}; rFID {r['rfid_transferred']:.4g} "
                f"(se {r['rfid_transferred_se']:.2g}) vs {r['rfid_searched']:.4g} (se {r['rfid_searched_se']:.2g}): "
                f"difference **{r['difference']:+.3g}**; search trials {r['search_trials_transfer']} vs "
                f"{r['search_trials_all_searched']} (**{ratio:.2f}x**), "
                f"all trials {r['trials_transfer']} vs {r['trials_all_searched']}")
    met = r["within_error"] and ratio < 0.5
    return what, measured, "within the transferred point's rfid_se, < 0.5x the search trials", "yes" if met else "no"


def _analysis_scale_row(r: dict):
    parts = [f"`{c['command']}` {c['seconds']:.1f} s" + (f", {c['peak_mb']:.0f} MB peak" if c["target_mb"] else "")
             for c in r["results"]]
    targets = [f"{c['command']} <= {c['target_s']:.0f} s" + (f" and {c['target_mb'] / 1024:.0f} GB" if c["target_mb"]
                                                               else "") for c in r["results"]]
    return (f"the analysis at {r['rows']:,} rows ({r['format']}): each command in a fresh process",
            "; ".join(parts), "; ".join(targets), "yes" if all(c["met"] for c in r["results"]) else "no")


def _adaptive_row(r: dict):
    law, u, ratios = r["law"], r["policies"]["uniform"], r["ratios"]

    def part(p: str, label: str) -> str:
        a, q = r["policies"][p], ratios[p]
        return (f"{label}: mean {a['mean_trials']:.1f} trials, median {a['median_trials']:g}, {a['capped']} capped: "
                f"**{q['mean_trials']:.2f}x** fewer (median {q['median_trials']:.2f}x), cost {q['mean_cost']:.2f}x")

    what = (f"trials until the 95% PI at 10x the largest of 3 start capacities is narrower than {r['width']:.3g} "
            f"({r['sweeps']} simulated sweeps of rFID = {law['a']:.4g} {law['b']:+.4g} log10(params), "
            f"sd {law['sd']:.3g}, each refitted by `analysis.fit`): the next capacity by `analysis.design` vs new "
            f"capacities uniformly in log space (cost: {law['cost']['source']})")
    parts = [f"uniform: mean {u['mean_trials']:.1f} trials, median {u['median_trials']:g}, {u['capped']} of "
             f"{r['sweeps']} hit the cap of {r['cap']}"]
    labels = {"adaptive": "c-optimal per trial", "adaptive-tool": "tool per trial",
              "adaptive-cost": "c-optimal per second", "adaptive-tool-cost": "tool per second"}
    parts += [part(p, labels[p]) for p in labels if p in ratios]
    first = ratios.get("adaptive", next(iter(ratios.values())))
    return what, "; ".join(parts), ">= 1.3x fewer trials (c-optimal per trial)", \
        "yes" if first["mean_trials"] >= 1.3 else "no"


def _gpu_row(r: dict):
    c = r["config"]
    mfu = r.get("mfu")
    measured = (f"{r['images_per_s']:.2f} images/s on {r['device']} (batch {c['batch_size']}); MFU "
                + (f"**{_pct(mfu)}**" if mfu is not None else "n/a (no peak known for this device)")
                + f"; fusion **{_pct(r['fusion_share'])}** of the step; {r['flops_per_image'] / 1e9:.1f} GFLOP/image")
    ok = "unmeasured (no H200 here)" if not r["is_h200"] else (
        "yes" if (mfu or 0) >= 0.40 and r["fusion_share"] <= 0.15 else "no")
    scale = "the paper's scale" if c["scale"] == 1 else f"{c['scale']:g} x the paper's depth and width (a CPU check)"
    return (f"phase-2 step at {scale}: ViT-B/14 + registers, {c['image_size']} px, {c['fused_layers']} layers, "
            f"h = {c['expert_hidden']}", measured, "MFU >= 40% and fusion <= 15% on an H200", ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="orchestration on 3 default widths, not the whole grid")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(_benchmarks(False)))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    args = ap.parse_args()
    benches = _benchmarks(args.quick)
    names = args.only.split(",") if args.only else list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"bench/run_all.py: error: --only: unknown benchmark {', '.join(unknown)}; expected some of "
              f"{', '.join(benches)}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    rows, failed = [], []
    tmp = Path(tempfile.mkdtemp(prefix="drorae-bench-"))
    for name in names:
        cmd, row = benches[name]
        out = tmp / f"{name}.json"
        print(f"== {name}: python {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd, "--json", str(out)], cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            failed.append(name)
            rows.append((name, f"failed (exit code {proc.returncode})", "", "no"))
            continue
        rows.append(row(json.loads(out.read_text())))
        print(f"   {time.perf_counter() - t:.0f} s", flush=True)
    lines = [f"# Benchmarks ({started:%Y-%m-%d %H:%M} UTC)", "", f"Machine: {_machine()}.", "",
             f"Command: `python bench/run_all.py{' --quick' if args.quick else ''}"
             f"{' --only ' + args.only if args.only else ''}` (`make bench`).", "",
             "| benchmark | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print("\n" + text + f"\nwritten to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

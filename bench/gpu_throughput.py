"""Phase-2 training throughput, model FLOP utilization (MFU) and the fusion module's share of the step.

Builds the paper's phase-2 step from ``sweeps/paper_capacity.yaml`` with random weights (nothing is
downloaded): DINOv2-B/14 with 4 registers, 256 px images resized to its 224 px input (16 x 16
tokens of patch 14, as model/encoder.py does), all 12 blocks fused at expert width h = 3072
(56.8M fusion parameters), RAE's ViT-B decoder (patch 16 back to 256 px) and the spec's phase-2
loss, L1 + LPIPS (VGG; the offline weights from model.assets, random ones of the same shape if
they are missing: the cost is the same). The step is ``model.train.run_phase`` itself, so what is
timed is what a trial runs: bf16 autocast on CUDA, fused AdamW, gradient clipping, pinned
non-blocking copies, ``torch.compile`` of the fusion module with --compile.

Three inputs, each run for --warmup + --steps steps, the last --steps timed:

  cached       encoder features already on the device: the step's compute alone. MFU and the
               targets (MFU >= 40% on an H200, fusion <= 15% of the step) are read on this row.
  host-cached  features in host memory, gathered into pinned memory and copied every step (a trial
               whose feature cache fits); CUDA only, on a CPU it is the row above.
  on-the-fly   images in host memory, the frozen encoder in the step (paper_capacity.yaml: its
               feature cache, ~6.8 TB, does not fit, so its trials run this way).

FLOPs are model FLOPs, counted by ``model.cost`` (torch.utils.flop_counter.FlopCounterMode; the
sweep's trials count theirs with the same functions) over one training step of phase 2 (forward
and backward, on min(batch, 16) images, per image), with the math attention kernel so that
attention counts alike on every device (no recomputation; the optimizer and elementwise work are
not counted); the encoder's, over its forward in the evaluation's reconstruction. MFU = achieved
FLOP/s / the device's dense bf16 peak (table below; --peak-tflops for another device; n/a on a CPU).

The fusion share is measured inside the timed steps: hooks on the fusion module record CUDA events
(synchronized clocks on a CPU) at the start and end of its forward, when the gradient reaches its
output (start of its backward) and as each of its parameter gradients is accumulated (the last one
ends its backward). The same marks split the step into data, fusion forward, decoder + loss
(forward and backward), fusion backward and optimizer. As a cross-check the fusion's forward +
backward is also timed alone on the same inputs. With --compile the hooks would break the compiled
graph, so the share is the isolated one.

    python bench/gpu_throughput.py                        # CUDA: batch 256, 20 steps; CPU: a small smoke run
    python bench/gpu_throughput.py --json results/gpu_throughput.json --markdown
    python bench/gpu_throughput.py --compile              # torch.compile the fusion module

On a CPU the defaults shrink everything (--scale 0.25: a quarter of the depths and widths, head
width kept; LPIPS on AlexNet; batch 2) so that it finishes in seconds; the figures then only show
that the path works. ``--scale 1 --lpips-net vgg --batch-size 1`` runs the paper's architecture on
a CPU (~40 s on 2 idle cores), which is enough to read its FLOPs per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from model import DRoRAE, DRoRAEConfig, FeatureSet, run_phase  # noqa: E402  (after the sys.path set-up)

log = logging.getLogger("gpu_throughput")

# Dense bf16 tensor-core peaks (TFLOP/s), NVIDIA datasheets; the first name contained in the
# device's name wins. GH200's GPU is an H100 SXM (its name contains "H200", with the same peak).
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0))
TARGET_MFU = 0.40  # issue 6: phase-2 step on an H200
TARGET_FUSION_SHARE = 0.15  # issue 6: the fusion module's forward + backward
FLOP_COUNT_IMAGES = 16  # FLOPs are per image; counting on a few images keeps the math attention small
PARTS = ("data", "fusion_fwd", "decoder_loss", "fusion_bwd", "optimizer")


# --- the paper's phase-2 step, with random weights --------------------------------------------


def _shrink(width: int, depth: int, heads: int, scale: float) -> tuple[int, int, int]:
    """(width, depth, heads) scaled by ``scale``, the head width kept."""
    h = max(1, round(heads * scale))
    return h * (width // heads), max(1, round(depth * scale)), h


def build(args, device: torch.device):
    """(model, phase-2 PhaseConfig, description) for the spec at ``args.scale``."""
    import timm

    from sweeper.plan import build_plan
    from sweeper.spec import load_spec

    plan = build_plan(load_spec(args.spec))
    enc = replace(plan.encoder, weights="none", checkpoint=None, layers=None)  # all blocks, random weights
    dec, hidden = plan.decoder, args.hidden
    if args.scale != 1:
        with torch.device("meta"):
            vit = timm.create_model(enc.name, pretrained=False, num_classes=0, img_size=enc.input_size,
                                    **enc.model_kwargs)
        width, depth, heads = _shrink(vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads, args.scale)
        enc = replace(enc, model_kwargs=dict(enc.model_kwargs, embed_dim=width, depth=depth, num_heads=heads))
        width, depth, heads = _shrink(dec.dim, dec.depth, dec.num_heads, args.scale)
        dec = replace(dec, dim=width, depth=depth, num_heads=heads)
        hidden = max(1, round(hidden * args.scale))
    cfg = DRoRAEConfig(encoder=enc, decoder=dec, image_size=plan.spec.data.resolution, expert_hidden=hidden)
    with torch.device(device):  # initialized where it runs: seconds instead of a minute on the host
        model = DRoRAE.from_config(cfg).to(device)
    loss = plan.phase2.loss
    net = args.lpips_net or loss.lpips_net
    loss = replace(loss, lpips=0.0) if net == "off" else replace(loss, lpips=loss.lpips or 1.0, lpips_net=net)
    phase = replace(plan.phase2, steps=args.warmup + args.steps, batch_size=args.batch_size, log_every=1,
                    eval_every=0, checkpoint_every=0, val_batch_size=args.batch_size, compile=args.compile,
                    loss=loss)
    return model, phase, plan


def lpips_weights_source(phase) -> str:
    """'offline' when the LPIPS asset is there; else LPIPS-shaped nets with random weights (same cost)."""
    if not phase.loss.lpips:
        return "off"
    from model import assets, metrics

    try:
        assets.lpips_weights(phase.loss.lpips_net)
        return "offline"
    except assets.AssetError:
        class RandomLPIPS(metrics.LPIPS):
            def __init__(self, net="alex", weights=None):
                torch.nn.Module.__init__(self)
                self.net = assets.lpips_module(net)
                self.requires_grad_(False)
                self.eval()

        metrics.load_lpips = lambda net="alex", weights=None, device="cpu": RandomLPIPS(net).to(device)
        log.warning("LPIPS %s weights missing: timing an LPIPS of the same shape with random weights",
                    phase.loss.lpips_net)
        return "random"


# --- clocks and the in-step probe ---------------------------------------------------------------


class Clock:
    """CUDA events on a GPU (stream order, no sync), perf_counter on a CPU (synchronous there)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class StepProbe:
    """run_phase's ``report`` plus hooks on the fusion module: marks around each part of each step."""

    def __init__(self, clock: Clock, warmup: int, steps: int, fusion: torch.nn.Module | None):
        self.clock, self.warmup, self.steps = clock, warmup, steps
        self.marks: dict[int, dict] = defaultdict(lambda: {"bwd_end": []})
        self.step, self.wall, self.handles = 0, {}, []
        if fusion is not None:
            self.handles.append(fusion.register_forward_pre_hook(lambda m, a: self._mark("fwd_start")))
            self.handles.append(fusion.register_forward_hook(self._after_forward))
            self.handles += [p.register_post_accumulate_grad_hook(lambda p: self._mark("bwd_end"))
                             for p in fusion.parameters() if p.requires_grad]

    def _mark(self, key: str):
        if not torch.is_grad_enabled() and key.startswith("fwd"):
            return  # validation forwards
        marks = self.marks[self.step + 1]
        if key == "bwd_end":
            marks[key].append(self.clock.mark())
        else:
            marks[key] = self.clock.mark()

    def _after_forward(self, module, args, out):
        self._mark("fwd_end")
        if out.requires_grad:
            out.register_hook(lambda grad: self._mark("bwd_start"))

    def __call__(self, metrics: dict):
        """run_phase's report: called once after each step."""
        if "loss" not in metrics:
            return
        self.step = metrics["step"]
        self.marks[self.step]["end"] = self.clock.mark()
        if self.step in (self.warmup, self.warmup + self.steps):
            self.clock.sync()
            self.wall[self.step] = time.perf_counter()

    def close(self) -> dict:
        """Seconds per step and the share of each part of it (None without hooks)."""
        for h in self.handles:
            h.remove()
        self.clock.sync()
        step_s = (self.wall[self.warmup + self.steps] - self.wall[self.warmup]) / self.steps
        if not self.handles:
            return {"step_s": step_s, "parts": None}
        s = self.clock.seconds
        sums = dict.fromkeys(PARTS, 0.0)
        for k in range(self.warmup + 1, self.warmup + self.steps + 1):
            m, prev = self.marks[k], self.marks[k - 1]["end"]
            bwd_end = max(m["bwd_end"], key=lambda e: s(m["bwd_start"], e))
            sums["data"] += s(prev, m["fwd_start"])
            sums["fusion_fwd"] += s(m["fwd_start"], m["fwd_end"])
            sums["decoder_loss"] += s(m["fwd_end"], m["bwd_start"])
            sums["fusion_bwd"] += s(m["bwd_start"], bwd_end)
            sums["optimizer"] += s(bwd_end, m["end"])
        total = sum(sums.values())
        return {"step_s": step_s, "parts": {k: v / total for k, v in sums.items()}}


# --- measurements ----------------------------------------------------------------------------


def count_flops(model, phase, train, n: int) -> dict:
    """Model FLOPs per image of one phase-2 step (by module) and of one encoder forward (``model.cost``)."""
    from model.cost import count_reconstruction, count_step

    step = count_step(model, 2, phase, train, images=n)
    encoder = count_reconstruction(model, train.images if isinstance(train, FeatureSet) else train, images=n)
    by_module = {k: step.by_module[k] for k in ("fusion", "decoder", "loss")}
    return {"step": step.total, "by_module": by_module, "encoder": encoder.by_module["encoder"]}


def time_phase(model, phase, train, val, clock, args, hooks: bool) -> dict:
    """run_phase for warmup + steps steps; the last ``steps`` timed (and split when ``hooks``)."""
    probe = StepProbe(clock, args.warmup, args.steps, model.fusion if hooks else None)
    run_phase(model, 2, phase, train, val, probe)
    return probe.close()


def time_alone(fn, clock, args) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup``."""
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            clock.sync()
            t0 = time.perf_counter()
        fn()
    clock.sync()
    return (time.perf_counter() - t0) / args.steps


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "none for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"{key} dense bf16"
    return None, f"unknown device {name!r}"


def measure(args) -> dict:
    device = torch.device(args.device)
    clock = Clock(device)
    torch.manual_seed(0)
    log.info("building the model on %s (random weights)", device)
    model, phase, plan = build(args, device)
    lpips_source = lpips_weights_source(phase)
    B = args.batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=phase.amp and device.type == "cuda")
    images = torch.rand(B, 3, plan.spec.data.resolution, plan.spec.data.resolution)  # (B, 3, H, W)
    log.info("encoding %d images for the feature cache", B)
    host = FeatureSet.encode(model, images, batch_size=B)  # fp16 features in host memory, as cached
    cached = FeatureSet(host.images.to(device), host.layers.to(device), host.base.to(device))

    log.info("counting FLOPs")
    flops = count_flops(model, phase, cached, min(B, FLOP_COUNT_IMAGES))
    hooks = not (args.compile and device.type == "cuda")
    inputs = {"cached": (cached, cached.head(1))}
    if device.type == "cuda":
        inputs["host-cached"] = (host, host.head(1))
    inputs["on-the-fly"] = (images, images[:1])
    modes = {}
    for mode, (train, val) in inputs.items():
        log.info("timing %s: %d + %d steps of %d images", mode, args.warmup, args.steps, B)
        r = time_phase(model, phase, train, val, clock, args, hooks)
        step_flops = flops["step"] + (flops["encoder"] if mode == "on-the-fly" else 0.0)
        modes[mode] = {"step_s": r["step_s"], "images_per_s": B / r["step_s"],
                       "achieved_tflops": step_flops * B / r["step_s"] / 1e12, "parts": r["parts"]}

    log.info("timing the fusion module and the encoder alone")
    fusion = torch.compile(model.fusion) if args.compile and device.type == "cuda" else model.fusion
    layers = cached.layers.float().transpose(0, 1)  # (L, B, T, D), as run_phase feeds it
    base = cached.base.float()  # (B, T, D)
    grad = torch.randn_like(base)  # dL/dz_final: the cost does not depend on its values

    def fusion_step():
        model.fusion.zero_grad(set_to_none=True)
        with autocast:
            z = fusion(layers, base)  # (B, T, D)
        z.backward(grad)

    def encoder_forward():
        with autocast:
            model.encoder(cached.images)

    fusion_s = time_alone(fusion_step, clock, args)
    encoder_s = time_alone(encoder_forward, clock, args)

    peak, peak_source = peak_tflops(device, args.peak_tflops)
    for m in modes.values():
        m["mfu"] = m["achieved_tflops"] / peak if peak else None
        parts = m["parts"]
        m["fusion_share"] = parts["fusion_fwd"] + parts["fusion_bwd"] if parts else None
    main = modes["cached"]
    fusion_share = main["fusion_share"] if main["fusion_share"] is not None else fusion_s / main["step_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    enc = model.encoder
    return {
        "device": name,
        "is_h200": "H200" in name and "GH200" not in name,
        "torch": torch.__version__,
        "config": {
            "spec": args.spec, "scale": args.scale, "encoder": enc.config.name, "encoder_weights": "random",
            "encoder_dim": enc.arch.dim, "encoder_depth": enc.arch.depth, "encoder_input_size": enc.config.input_size,
            "image_size": plan.spec.data.resolution, "tokens": enc.num_tokens, "fused_layers": len(enc.layers),
            "expert_hidden": model.fusion.config.hidden, "fusion_params": model.fusion_params(),
            "decoder": asdict(model.decoder.config), "decoder_patch": model.decoder.patch_size,
            "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
            "loss": asdict(phase.loss), "lpips_weights": lpips_source, "batch_size": B, "steps": args.steps,
            "warmup": args.warmup, "amp_bf16": bool(phase.amp and device.type == "cuda"), "compile": args.compile,
            "lr": phase.lr, "grad_clip": phase.grad_clip, "flop_count_images": min(B, FLOP_COUNT_IMAGES),
        },
        "peak_tflops": peak, "peak_source": peak_source,
        "flops_per_image": flops["step"], "flops_per_image_by_module": flops["by_module"],
        "encoder_flops_per_image": flops["encoder"],
        "images_per_s": main["images_per_s"], "step_s": main["step_s"], "achieved_tflops": main["achieved_tflops"],
        "mfu": main["mfu"],
        "fusion_share": fusion_share,
        "fusion_share_method": "in-step hooks" if main["parts"] else "fusion timed alone / step",
        "fusion_alone_s": fusion_s, "fusion_share_alone": fusion_s / main["step_s"],
        "encoder_forward_s": encoder_s,
        "modes": modes,
        "targets": {"mfu_min": TARGET_MFU, "fusion_share_max": TARGET_FUSION_SHARE, "on": "NVIDIA H200"},
    }


# --- output ----------------------------------------------------------------------------------


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def text_report(r: dict) -> str:
    c, f, dec = r["config"], r["flops_per_image_by_module"], r["config"]["decoder"]
    loss = "L1"
    if c["loss"]["lpips"]:
        loss += f" + LPIPS ({c['loss']['lpips_net']}, {c['lpips_weights']} weights)"
    model = (f"{c['encoder']} (random weights, d={c['encoder_dim']}, {c['encoder_depth']} blocks), "
             f"{c['image_size']} px images at {c['encoder_input_size']} px ({c['tokens']} tokens), "
             f"{c['fused_layers']} blocks fused, h={c['expert_hidden']} ({c['fusion_params'] / 1e6:.1f}M fusion "
             f"params); decoder {dec['dim']}x{dec['depth']} ({c['decoder_params'] / 1e6:.1f}M); {loss}")
    run = (f"scale {c['scale']}, batch {c['batch_size']}, {c['warmup']} + {c['steps']} steps, "
           f"bf16 autocast {'on' if c['amp_bf16'] else 'off'}, compile {'on' if c['compile'] else 'off'}")
    peak = f"{r['peak_tflops']} TFLOP/s" if r["peak_tflops"] else "n/a"
    flops = (f"{r['flops_per_image'] / 1e9:.2f} G per step (fusion {f['fusion'] / 1e9:.2f} G, "
             f"decoder {f['decoder'] / 1e9:.2f} G, loss {f['loss'] / 1e9:.2f} G); "
             f"encoder forward {r['encoder_flops_per_image'] / 1e9:.2f} G")
    lines = [f"phase-2 step: {model}", f"  {run}", f"device: {r['device']}; peak: {peak} ({r['peak_source']})",
             f"model FLOPs per image: {flops}", "",
             f"  {'input':<12} {'images/s':>10} {'step ms':>10} {'TFLOP/s':>9} {'MFU':>7} {'fusion':>7}"]
    for mode, m in r["modes"].items():
        lines.append(f"  {mode:<12} {m['images_per_s']:>10.2f} {1e3 * m['step_s']:>10.1f} "
                     f"{m['achieved_tflops']:>9.3f} {_pct(m['mfu']):>7} {_pct(m['fusion_share']):>7}")
    parts = r["modes"]["cached"]["parts"]
    if parts:
        lines.append("  cached step: " + ", ".join(f"{k} {_pct(v)}" for k, v in parts.items()))
    where = "" if r["is_h200"] else f" -- measured on {r['device']}, not an H200"
    fusion = (f"fusion share {_pct(r['fusion_share'])} of the step (target <= {TARGET_FUSION_SHARE:.0%}); "
              f"timed alone: {_pct(r['fusion_share_alone'])} ({1e3 * r['fusion_alone_s']:.1f} ms fwd+bwd)")
    encoder = (f"encoder forward alone: {1e3 * r['encoder_forward_s']:.1f} ms per batch "
               f"({_pct(r['encoder_forward_s'] / r['step_s'])} of the cached step)")
    lines += ["", f"MFU {_pct(r['mfu'])} (target >= {TARGET_MFU:.0%} on H200){where}", fusion, encoder]
    return "\n".join(lines)


def markdown_report(r: dict) -> str:
    c = r["config"]
    rows = ["| device | input | batch | images/s | step (ms) | TFLOP/s | MFU | fusion share |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode, m in r["modes"].items():
        rows.append(f"| {r['device']} | {mode} | {c['batch_size']} | {m['images_per_s']:.2f} | "
                    f"{1e3 * m['step_s']:.1f} | {m['achieved_tflops']:.3f} | {_pct(m['mfu'])} | "
                    f"{_pct(m['fusion_share'])} |")
    return "\n".join(rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/paper_capacity.yaml", help="encoder, decoder, data size, phase 2")
    ap.add_argument("--hidden", type=int, default=3072, help="expert width h (before --scale)")
    ap.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda, cuda:1, cpu")
    ap.add_argument("--batch-size", type=int, help="default: 256 on CUDA, 2 on a CPU")
    ap.add_argument("--steps", type=int, help="timed steps; default: 20 on CUDA, 2 on a CPU")
    ap.add_argument("--warmup", type=int, help="untimed steps first (>= 1); default: 5 on CUDA, 1 on a CPU")
    ap.add_argument("--scale", type=float, help="depths, widths (head width kept) and h times this; "
                                                "default: 1 on CUDA, 0.25 on a CPU")
    ap.add_argument("--lpips-net", choices=("vgg", "alex", "off"),
                    help="LPIPS network; default: the spec's (vgg) on CUDA, alex on a CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fusion module (CUDA), as phase.compile")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the device, for MFU")
    ap.add_argument("--json", metavar="PATH", help="also write every figure to this file")
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if not Path(args.spec).exists() and (ROOT / args.spec).exists():  # run from outside the repository
        args.spec = str(ROOT / args.spec)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device")
    if cuda:
        defaults = {"batch_size": 256, "steps": 20, "warmup": 5, "scale": 1.0}
    else:  # a smoke run: the paper's architecture takes minutes a step on a few cores
        defaults = {"batch_size": 2, "steps": 2, "warmup": 1, "scale": 0.25, "lpips_net": "alex"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "steps", "warmup", "hidden"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')}: expected a positive integer, got {getattr(args, key)}")
    if not (0 < args.scale <= 1 and math.isfinite(args.scale)):
        ap.error(f"--scale: expected a number in (0, 1], got {args.scale}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        ap.error(f"--peak-tflops: expected a positive number, got {args.peak_tflops}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        r = measure(args)
    except torch.cuda.OutOfMemoryError:
        sys.exit(f"gpu_throughput: out of GPU memory at batch {args.batch_size}; try --batch-size "
                 f"{max(1, args.batch_size // 2)}")
    print(text_report(r))
    if args.markdown:
        print()
        print(markdown_report(r))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()

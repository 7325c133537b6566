"""bench/gpu_throughput.py on a CPU: it runs, and its FLOP counts match closed forms."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_throughput.py"


def _fusion_flops(tokens: int, L: int, d: int, h: int) -> int:
    """Forward + backward FLOPs of the fusion module for one image, from its matmul shapes.

    Per token, forward: the L experts (d -> h -> d, 2 * 2dh each), the router (L*d -> L) and the
    weighted sum of the L expert outputs (L*d multiply-adds). Backward: every matmul's input
    gradient and weight gradient (its inputs all hang on trainable LayerNorm weights), 2x forward.
    """
    forward = 2 * (L * 2 * d * h + L * d * L + L * d)
    return 3 * forward * tokens


def _decoder_flops(tokens: int, d_enc: int, dim: int, depth: int, mlp_ratio: float, patch: int) -> int:
    """Forward + backward FLOPs of the frozen ViT decoder for one image.

    Linear weights: embed d_enc x D, per block qkv 3D^2 + proj D^2 + MLP 2 * ratio * D^2, head
    D x 3p^2; attention QK^T and AV, 2 * N^2 * D each per block. The decoder is frozen, so its
    backward computes input gradients only: once the linear FLOPs, twice the attention FLOPs
    (gradients of Q and K, and of the weights and V).
    """
    weights = d_enc * dim + depth * int((4 + 2 * mlp_ratio) * dim * dim) + dim * 3 * patch * patch
    attention = depth * 4 * tokens * tokens * dim
    return 2 * (2 * tokens * weights) + 3 * attention


@pytest.mark.slow
def test_cpu_run_exits_0_with_flops_matching_closed_forms(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    peak = 0.5  # TFLOP/s: any value makes the MFU arithmetic checkable on a CPU
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--scale", "0.125", "--batch-size", "1",
           "--warmup", "1", "--steps", "1", "--lpips-net", "alex", "--peak-tflops", str(peak),
           "--json", str(out), "--markdown"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    c = r["config"]

    assert r["images_per_s"] > 0 and r["step_s"] > 0
    assert r["images_per_s"] == pytest.approx(c["batch_size"] / r["step_s"])
    assert set(r["modes"]) == {"cached", "on-the-fly"}  # host-cached only on CUDA
    by = r["flops_per_image_by_module"]
    assert by["fusion"] == pytest.approx(
        _fusion_flops(c["tokens"], c["fused_layers"], c["encoder_dim"], c["expert_hidden"]), rel=1e-9)
    d = c["decoder"]
    assert by["decoder"] == pytest.approx(
        _decoder_flops(c["tokens"], c["encoder_dim"], d["dim"], d["depth"], d["mlp_ratio"], c["decoder_patch"]),
        rel=1e-9)
    assert by["loss"] > 0  # LPIPS (AlexNet) forward on both images, backward on the reconstruction
    assert r["flops_per_image"] == pytest.approx(sum(by.values()))
    assert r["encoder_flops_per_image"] > 0

    assert 0 < r["fusion_share"] < 1, r["modes"]["cached"]
    # Timed alone (one step, on a shared CPU) it is only a cross-check: positive, not bounded by 1.
    assert r["fusion_alone_s"] > 0 and r["fusion_share_alone"] > 0
    parts = r["modes"]["cached"]["parts"]
    assert sum(parts.values()) == pytest.approx(1.0) and all(v >= 0 for v in parts.values())
    assert r["fusion_share"] == pytest.approx(parts["fusion_fwd"] + parts["fusion_bwd"])
    assert r["achieved_tflops"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / peak)
    assert not r["is_h200"]

    assert "(target >= 40% on H200)" in proc.stdout and "(target <= 15%)" in proc.stdout
    assert "not an H200" in proc.stdout
    assert "| CPU" in proc.stdout  # the Markdown table


def _load():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_is_looked_up_by_device_name(monkeypatch, name, peak):
    gt = _load()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert gt.peak_tflops(torch.device("cuda"), None)[0] == peak
    assert gt.peak_tflops(torch.device("cuda"), 123.0)[0] == 123.0
    assert gt.peak_tflops(torch.device("cpu"), None)[0] is None


def test_scale_keeps_the_head_width():
    gt = _load()
    assert gt._shrink(768, 12, 12, 1.0) == (768, 12, 12)
    assert gt._shrink(768, 12, 12, 0.25) == (192, 3, 3)
    assert gt._shrink(1024, 24, 16, 0.01) == (64, 1, 1)


@pytest.mark.parametrize("argv", [["--scale", "2"], ["--steps", "0"], ["--warmup", "0"], ["--peak-tflops", "-1"]])
def test_bad_arguments_exit_2(argv):
    gt = _load()
    with pytest.raises(SystemExit) as exc:
        gt.parse_args(["--device", "cpu", *argv])
    assert exc.value.code == 2

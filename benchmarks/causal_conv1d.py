"""Causal depthwise conv1d benchmark: the Triton kernels vs PyTorch's F.conv1d, side by side, same run.

Both get the mixer's input: x a channel-last (batch, dim, L) view of a (batch, L, 2*dim) bf16 tensor,
width 4, fp32 weight and bias, SiLU. PyTorch: F.conv1d(x, w, b, padding=k-1, groups=dim)[..., :L],
then F.silu (what mamba_seq's mixer did before this kernel). Median of repeated timed runs
(triton.testing.do_bench, CUDA events) of the forward and of forward+backward (gradients to x,
weight and bias); effective GB/s over a minimum-bytes model: forward reads x and writes y, backward
reads x and dy and writes dx (weights and the dw/dbias partials are negligible), so
fwd = 2 * numel * 2 bytes, fwd+bwd = 5 * numel * 2 bytes, for both columns. Peak memory: the
largest torch.cuda.max_memory_allocated over one forward+backward, inputs included.

    python3 benchmarks/causal_conv1d.py [--json out.json]
    python3 benchmarks/causal_conv1d.py --cpu-smoke      # tiny shapes, Triton interpreted: checks the script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [  # (batch, dim, L)
    (1, 1536, 1 << 16),
    (1, 1536, 1 << 20),
    (8, 1024, 2048),
]
SMOKE_SHAPES = [(1, 24, 64), (2, 16, 40)]
K = 4
GiB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch  # noqa: E402

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from kernels.causal_conv1d import causal_conv1d_reference  # noqa: E402
    from kernels.causal_conv1d.triton_conv import causal_conv1d_triton  # noqa: E402

    if args.cpu_smoke:
        device, shapes, dtype = "cpu", SMOKE_SHAPES, torch.float32
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a CUDA device (or --cpu-smoke)")
        device, shapes, dtype = "cuda", SHAPES, torch.bfloat16
    esize = torch.empty((), dtype=dtype).element_size()

    def pytorch_conv(x, w, b):
        L = x.shape[-1]
        y = torch.nn.functional.conv1d(x, w.unsqueeze(1), b, padding=w.shape[1] - 1, groups=w.shape[0])[..., :L]
        return torch.nn.functional.silu(y)

    def triton_conv(x, w, b):
        return causal_conv1d_triton(x, w, b, silu=True)

    impls = {"triton": triton_conv, "pytorch": pytorch_conv}

    def bench(fn):
        if device == "cuda":
            import triton.testing

            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    print(header(device, torch))
    print(f"{'shape (batch, dim, L)':>24} {'impl':>8} {'fwd ms':>9} {'fwd GB/s':>9} {'f+b ms':>9} "
          f"{'f+b GB/s':>9} {'peak GiB':>9} {'max err':>9}")
    rows = []
    for batch, dim, L in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        xz = torch.randn(batch, L, 2 * dim, device=device, dtype=dtype, generator=g)
        x = xz[..., :dim].transpose(1, 2)  # channel-last (batch, dim, L) view, as in the mixer
        w = (torch.randn(dim, K, device=device, generator=g) / 2).requires_grad_()
        b = torch.randn(dim, device=device, generator=g).requires_grad_()
        dy = torch.randn(batch, L, dim, device=device, dtype=dtype, generator=g).transpose(1, 2)
        xg = x.detach().requires_grad_()
        numel = batch * dim * L
        y_ref = causal_conv1d_reference(x.float(), w.detach(), b.detach(), silu=True)
        for name, fn in impls.items():
            with torch.no_grad():
                err = ((fn(x, w, b).float() - y_ref).abs().max()).item()
            with torch.no_grad():
                fwd = bench(lambda: fn(x, w, b))

            def fwd_bwd():
                y = fn(xg, w, b)
                torch.autograd.grad(y, (xg, w, b), dy)

            fb = bench(fwd_bwd)
            peak = float("nan")
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                fwd_bwd()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() / GiB
            gbs_f = 2 * numel * esize / (fwd * 1e-3) / 1e9
            gbs_fb = 5 * numel * esize / (fb * 1e-3) / 1e9
            row = dict(batch=batch, dim=dim, L=L, impl=name, fwd_ms=fwd, fwd_gbs=gbs_f, fwd_bwd_ms=fb,
                       fwd_bwd_gbs=gbs_fb, peak_gib=peak, max_abs_err_vs_fp32_ref=err)
            rows.append(row)
            print(f"{str((batch, dim, L)):>24} {name:>8} {fwd:9.3f} {gbs_f:9.1f} {fb:9.3f} {gbs_fb:9.1f} "
                  f"{peak:9.2f} {err:9.2e}")
        del xz, x, dy, xg
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=header(device, torch), rows=rows), f, indent=1)


def header(device: str, torch) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        commit = "?"
    import triton

    dev = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter: not a speed)"
    return (f"# causal_conv1d k={K} silu bias, channel-last x | {dev} | torch {torch.__version__} "
            f"triton {triton.__version__} | {datetime.date.today()} | commit {commit}")


if __name__ == "__main__":
    main()

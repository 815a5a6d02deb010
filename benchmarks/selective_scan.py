"""Selective scan benchmark: Triton kernels vs mamba_ssm's CUDA kernel, side by side, same run.

bf16 u/delta/z/B/C, fp32 A/D/delta_bias, N = 16, delta_softplus, with D and z (the Mamba block's
call). Median of repeated timed runs (triton.testing.do_bench, CUDA events), forward and
forward+backward; tokens/s, achieved GB/s over a minimum-bytes model (each input read once, each
output written once: fwd u, delta, z, B, C in + out; bwd the same plus dout in and du, ddelta, dz,
dB, dC out), peak memory (torch.cuda.max_memory_allocated over one call, inputs included).

    python3 benchmarks/selective_scan.py [--compare-cuda] [--json out.json] [--sweep]

mamba_ssm's CUDA scan is imported as the extension `selective_scan_cuda`, built on the GPU machine by
`--build-cuda` (benchmarks/device_scan.sh does it); it is never a dependency of the product.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = [  # (batch, dim, L)
    (8, 2048, 2048),
    (1, 1536, 65536),
    (1, 1536, 1 << 20),
    (4, 1536, 262144),
]
N = 16
GiB = 1024**3


def make(batch, dim, L, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = torch.bfloat16
    dt0 = torch.exp(torch.rand(dim, device="cuda", generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=torch.randn(batch, dim, L, device="cuda", dtype=bf, generator=g),
        delta=(torch.randn(batch, dim, L, device="cuda", generator=g) * 0.5).to(bf),
        A=-torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, 1, N, L, device="cuda", dtype=bf, generator=g),
        C=torch.randn(batch, 1, N, L, device="cuda", dtype=bf, generator=g),
        D=torch.randn(dim, device="cuda", generator=g),
        z=torch.randn(batch, dim, L, device="cuda", dtype=bf, generator=g),
        delta_bias=dt0 + torch.log(-torch.expm1(-dt0)),
    )


def triton_impl(config=None):
    from kernels.selective_scan import triton_scan as ts

    kw = {}
    if config is not None:
        kw = dict(chunk_size=config[0], block_d=config[1], num_warps=config[2])
        config = config[:3]

    def fwd(x):
        return ts.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                        delta_bias=x["delta_bias"], delta_softplus=True, **kw)

    def fwd_bwd(x, leaves, dout):
        out = fwd(leaves)
        out.backward(dout)

    class Impl(tuple):
        pass

    def carry(x, dout):
        T, bd, w = config or ts.scan_config(x["u"].shape[1], N, x["u"].dtype)
        ts._bwd_impl(dout, None, x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True,
                     None, None, False, None, T, bd, w, run_main=False)

    impl = Impl((fwd, fwd_bwd))
    impl.carry = carry
    return impl


def cuda_impl():
    import selective_scan_cuda as ssc  # noqa: F401

    def fwd(x):
        out, xs, out_z = ssc.fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
        return out_z

    def fwd_bwd(x, leaves, dout):
        # the same work mamba_ssm's SelectiveScanFn does (fwd saves x and out; bwd recomputes)
        out, xs, out_z = ssc.fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
        ssc.bwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], dout, xs, out,
                None, True, False)

    return fwd, fwd_bwd


def min_bytes(batch, dim, L, bwd):
    act = batch * dim * L * 2  # one bf16 activation
    bc = batch * N * L * 2
    fwd = 4 * act + 2 * bc  # u, delta, z in, out
    if not bwd:
        return fwd
    return fwd + 3 * act + 2 * bc + 4 * act + 2 * bc  # bwd: u, delta, z, dout, B, C in; du, ddelta, dz, dB, dC out


def bench_one(impl, batch, dim, L, rep_ms):
    import triton.testing

    fwd, fwd_bwd = impl
    x = make(batch, dim, L)
    leaves = {k: (v.detach().clone().requires_grad_() if v.is_floating_point() else v) for k, v in x.items()}
    dout = torch.randn(batch, dim, L, device="cuda", dtype=torch.bfloat16)
    res = {}
    with torch.no_grad():
        fwd(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fwd(x)
        torch.cuda.synchronize()
        res["fwd_peak_GiB"] = torch.cuda.max_memory_allocated() / GiB
        res["fwd_ms"] = triton.testing.do_bench(lambda: fwd(x), warmup=25, rep=rep_ms, return_mode="median")

    def fb():
        for v in leaves.values():
            if isinstance(v, torch.Tensor) and v.grad is not None:
                v.grad = None
        fwd_bwd(x, leaves, dout)

    fb()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fb()
    torch.cuda.synchronize()
    res["fwdbwd_peak_GiB"] = torch.cuda.max_memory_allocated() / GiB
    res["fwdbwd_ms"] = triton.testing.do_bench(fb, warmup=25, rep=rep_ms, return_mode="median")
    tokens = batch * L
    res["fwd_Mtok_s"] = tokens / res["fwd_ms"] / 1e3
    res["fwdbwd_Mtok_s"] = tokens / res["fwdbwd_ms"] / 1e3
    res["fwd_GBs"] = min_bytes(batch, dim, L, False) / res["fwd_ms"] / 1e6
    res["fwdbwd_GBs"] = min_bytes(batch, dim, L, True) / res["fwdbwd_ms"] / 1e6
    if getattr(impl, "carry", None) is not None:  # triton: time the backward's carry pass alone
        res["bwd_carry_ms"] = triton.testing.do_bench(lambda: impl.carry(x, dout), warmup=25, rep=rep_ms,
                                                      return_mode="median")
    del x, leaves, dout
    torch.cuda.empty_cache()
    return res


# mamba_ssm CUDA build (benchmark only)
STUB = r"""
#include <ATen/ATen.h>
#include <c10/util/complex.h>
#include <cuda_runtime.h>
#include "selective_scan.h"
using complex_t = c10::complex<float>;
template<typename input_t, typename weight_t>
void selective_scan_fwd_cuda(SSMParamsBase &params, cudaStream_t stream) { TORCH_CHECK(false, "only bf16 built"); }
template<typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd &params, cudaStream_t stream) { TORCH_CHECK(false, "only bf16 built"); }
template void selective_scan_fwd_cuda<float, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<float, complex_t>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<at::Half, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<at::Half, complex_t>(SSMParamsBase &, cudaStream_t);
template void selective_scan_bwd_cuda<float, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<float, complex_t>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::Half, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::Half, complex_t>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::BFloat16, complex_t>(SSMParamsBwd &, cudaStream_t);
"""


def build_mamba_cuda(src: str, out: str):
    """Build mamba_ssm's `selective_scan_cuda` for sm_90 from its sdist (bf16 real only; the other
    dtype instantiations are stubs that raise), into `out`. A few minutes on the GPU machine."""
    import glob
    import shutil

    from torch.utils.cpp_extension import load

    cs = os.path.abspath(os.path.join(src, "csrc", "selective_scan"))
    build = "/tmp/mamba_build"
    os.makedirs(build, exist_ok=True)
    stub = os.path.join(build, "stubs.cu")
    with open(stub, "w") as f:
        f.write(STUB)
    flags = [
        "-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
        "-gencode", "arch=compute_90,code=sm_90", "--threads", "4",
    ]
    os.environ.setdefault("MAX_JOBS", "8")
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    t0 = time.time()
    load(
        name="selective_scan_cuda",
        sources=[f"{cs}/selective_scan.cpp", f"{cs}/selective_scan_fwd_bf16.cu",
                 f"{cs}/selective_scan_bwd_bf16_real.cu", stub],
        extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=flags, extra_include_paths=[cs],
        build_directory=build, verbose=False,
    )
    os.makedirs(out, exist_ok=True)
    for so in glob.glob(os.path.join(build, "selective_scan_cuda*.so")):
        shutil.copy(so, out)
    print(f"built selective_scan_cuda in {time.time() - t0:.0f}s -> {out}")



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-cuda", nargs=2, metavar=("SDIST_DIR", "OUT_DIR"), default=None,
                    help="build mamba_ssm's selective_scan_cuda from an unpacked sdist and exit")
    ap.add_argument("--compare-cuda", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rep-ms", type=int, default=400)
    ap.add_argument("--shapes", default=None, help="b,d,L;b,d,L")
    ap.add_argument("--sweep", default=None, help="chunk,BD,warps[,maxnreg[,unroll]];... launch settings to time (fwd and fwd+bwd)")
    ap.add_argument("--sweep-shapes", default="1,1536,1048576;8,2048,2048")
    args = ap.parse_args()
    if args.build_cuda:
        build_mamba_cuda(*args.build_cuda)
        return
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    dev = torch.cuda.get_device_name()
    print(f"device {dev}; torch {torch.__version__}; "
          f"triton {__import__('triton').__version__}; {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    results = []

    if args.sweep:
        sshapes = [tuple(int(v) for v in s.split(",")) for s in args.sweep_shapes.split(";")]
        for cfg in args.sweep.split(";"):
            c = tuple(int(v) for v in cfg.split(","))
            # optional: the backward main kernel's register cap (0: the default) and states per iteration
            for k, env in ((3, "MAMBA_SEQ_SCAN_MAXNREG"), (4, "MAMBA_SEQ_SCAN_UNROLL")):
                if len(c) > k and c[k]:
                    os.environ[env] = str(c[k])
                else:
                    os.environ.pop(env, None)
            name = f"T={c[0]} BD={c[1]} warps={c[2]} maxnreg={c[3] if len(c) > 3 else '-'} unroll={c[4] if len(c) > 4 else '-'}"
            for b, d, L in sshapes:
                try:
                    r = bench_one(triton_impl(c[:3]), b, d, L, args.rep_ms)
                    print(f"sweep {name} b{b} d{d} L{L}: fwd {r['fwd_ms']:.3f} ms "
                          f"fwd+bwd {r['fwdbwd_ms']:.3f} ms (bwd state+carry passes {r.get('bwd_carry_ms', 0):.3f} ms) "
                          f"peak {r['fwdbwd_peak_GiB']:.1f} GiB", flush=True)
                    results.append(dict(impl="triton", config=c, batch=b, dim=d, L=L, **r))
                except Exception as e:  # a setting that fails to compile/run is reported, not fatal
                    print(f"sweep {name} b{b} d{d} L{L}: FAILED {type(e).__name__}: {e}"[:300], flush=True)

    os.environ.pop("MAMBA_SEQ_SCAN_MAXNREG", None)
    os.environ.pop("MAMBA_SEQ_SCAN_UNROLL", None)
    impls = [("triton", triton_impl())]
    if args.compare_cuda:
        try:
            impls.append(("cuda", cuda_impl()))
        except ImportError as e:
            print(f"mamba_ssm CUDA scan not importable: {e}")
    table = []
    for b, d, L in shapes:
        row = {"shape": (b, d, L)}
        for name, impl in impls:
            r = bench_one(impl, b, d, L, args.rep_ms)
            row[name] = r
            results.append(dict(impl=name, batch=b, dim=d, L=L, **r))
            print(f"{name:6s} b{b} d{d} L{L}: fwd {r['fwd_ms']:.3f} ms  fwd+bwd {r['fwdbwd_ms']:.3f} ms  "
                  f"peak {r['fwdbwd_peak_GiB']:.1f} GiB", flush=True)
        table.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, date=time.strftime("%Y-%m-%d"), results=results), f, indent=1)

    print()
    hdr = ("| batch | dim | L | impl | fwd ms | fwd Mtok/s | fwd GB/s | fwd+bwd ms | fwd+bwd Mtok/s | "
           "fwd+bwd GB/s | peak fwd+bwd GiB | speed-up fwd | speed-up fwd+bwd |")
    print(hdr)
    print("|" + "---|" * 13)
    for row in table:
        b, d, L = row["shape"]
        for name, _ in impls:
            r = row[name]
            if name == "triton" and "cuda" in row:
                c = row["cuda"]
                s1, s2 = f"{c['fwd_ms'] / r['fwd_ms']:.2f}x", f"{c['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x"
            else:
                s1 = s2 = ""
            print(f"| {b} | {d} | {L} | {name} | {r['fwd_ms']:.3f} | {r['fwd_Mtok_s']:.1f} | {r['fwd_GBs']:.0f} | "
                  f"{r['fwdbwd_ms']:.3f} | {r['fwdbwd_Mtok_s']:.1f} | {r['fwdbwd_GBs']:.0f} | "
                  f"{r['fwdbwd_peak_GiB']:.1f} | {s1} | {s2} |")


if __name__ == "__main__":
    main()

"""Compile the scan kernels for sm_90 on a machine without a GPU and count SASS instructions.

    python benchmarks/sass_counts.py [--dtype bf16] [--bd 32] [--warps 1] [--unroll 2] [--dump DIR]
    MAXNREG=168 python benchmarks/sass_counts.py ...   (the register cap the backward main kernel runs with)

Prints, per kernel, the instruction mix of the loop bodies (a lead for where time goes; the GPU
has the final word) and whether Triton inserted layout conversions or local-memory spills.
Needs the Triton wheel's nvdisasm (it ships with Triton's NVIDIA backend).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.selective_scan import triton_kernels as K

FLOAT_PTRS = {"A_ptr", "D_ptr", "bias_ptr", "init_ptr", "final_ptr", "hloc_ptr", "dts_ptr", "loc_ptr",
              "hin_ptr", "states_ptr", "qin_ptr", "qloc_ptr", "scr_ptr", "dBCp_ptr", "dAp_ptr",
              "dDp_ptr", "dbp_ptr"}


def compile_kernel(fn, dtype: str, const: dict, warps: int):
    names = list(inspect.signature(fn.fn).parameters)
    sig, attrs = {}, {}
    for j, name in enumerate(names):
        if name in const:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in FLOAT_PTRS else ("*i32" if name == "seq_ptr" else f"*{dtype}")
            attrs[(j,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name.startswith("s_") or name in ("dim", "dpg"):
                attrs[(j,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs={k: v for k, v in const.items()}, attrs=attrs)
    opts = dict(num_warps=warps, **({"maxnreg": int(os.environ["MAXNREG"])} if os.environ.get("MAXNREG") else {}))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def sass_mix(cubin: bytes, tmp: Path) -> tuple[Counter, str]:
    tmp.write_bytes(cubin)
    bin_dir = Path(triton.__file__).parent / "backends/nvidia/bin"
    sass = subprocess.run([str(bin_dir / "nvdisasm"), "-c", str(tmp)], capture_output=True, text=True).stdout
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass, re.M)
    res = subprocess.run([str(bin_dir / "cuobjdump"), "--dump-resource-usage", str(tmp)], capture_output=True,
                         text=True).stdout
    usage = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", res)
    usage_s = f"regs {usage[1]} stack {usage[2]} local {usage[3]}" if usage else "regs ?"
    return Counter(o.split(".")[0] for o in ops), usage_s, loop_bodies(sass)


def loop_bodies(sass: str) -> list[tuple[int, int, int, int]]:
    """(instructions, STL, LDL, SHFL) of every loop (a backward branch) whose body computes exp2:
    the per-tile state loops, one per variant (masked/unmasked, scan direction)."""
    ins, labels = [], {}
    for line in sass.splitlines():
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(1))
    out = []
    for k, op in enumerate(ins):
        m = re.search(r"BRA\s+(?:`\()?\.?(L_x_\d+)", op)
        if m and labels.get(m.group(1), k + 1) < k:
            body = ins[labels[m.group(1)]:k + 1]
            if any("MUFU.EX2" in x for x in body):
                out.append((len(body), *(sum(t in x for x in body) for t in ("STL", "LDL", "SHFL"))))
    return sorted(set(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--bd", type=int, default=32)
    ap.add_argument("--warps", type=int, default=1)
    ap.add_argument("--N", type=int, default=16)
    ap.add_argument("--dump", default=None)
    ap.add_argument("--lane-sum", type=int, default=1)
    ap.add_argument("--T", type=int, default=0)
    ap.add_argument("--unroll", type=int, default=2, help="states per iteration of the backward main loop")
    args = ap.parse_args()
    T = args.T or 16 // {"bf16": 2, "fp16": 2, "fp32": 4}[args.dtype]
    common = dict(HAS_DBIAS=True, SOFTPLUS=True, HAS_SEQ=False, REVERSE=False, BD=args.bd, N=args.N,
                  NP=args.N, T=T)
    kernels = {
        "fwd_state": (K._fwd_state_kernel, common),
        "fwd_out": (K._fwd_out_kernel, dict(common, HAS_D=True, HAS_Z=True, SAVE_STATES=True)),
        "bwd_state": (K._bwd_state_kernel, dict(common, HAS_Z=True)),
        "bwd_main": (K._bwd_main_kernel, dict(common, HAS_D=True, HAS_Z=True, LANE_SUM=args.lane_sum,
                                               SHFL_ASM=True, UNROLL=args.unroll)),
    }
    tmp = Path("/tmp/_scan_sass.cubin")
    for name, (fn, const) in kernels.items():
        cc = compile_kernel(fn, args.dtype, const, args.warps)
        ttgir = cc.asm["ttgir"]
        mix, usage, loops = sass_mix(cc.asm["cubin"], tmp)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            Path(args.dump, name + ".ttgir").write_text(ttgir)
        total = sum(mix.values())
        top = ", ".join(f"{k} {v}" for k, v in mix.most_common(14))
        print(f"{name:10s} {usage} converts {ttgir.count('convert_layout')} smem {cc.metadata.shared} "
              f"SASS {total}: {top}")
        print(f"{'':10s} exp2 loops (instructions, STL, LDL, SHFL): {loops}")


if __name__ == "__main__":
    main()

"""Autoregressive decode benchmark: steps/s and samples/s of `generate`'s decode step, eager and
CUDA-graph, and peak memory over long generations (it must not grow with the number of steps).

Model (--model sc09-small, the default): a stand-in for the Mamba paper's small SC09 model
(Gu & Dao 2023, Table 4: "Mamba, 6.1M parameters"). The paper's model is a SaShiMi-style U-Net
(two pooling stages, Mamba blocks replacing S4+MLP); mamba-seq's MambaLMHeadModel is a flat
residual stack, so this benchmark uses a flat stack of the same size:
    d_model 256, n_layer 14, d_state 16, d_conv 4, expand 2, vocab 256 (8-bit mu-law), tied
    embeddings -> 6,198,016 parameters (printed and checked below).
Every layer runs at the full 16 kHz rate here, where the U-Net runs its inner stages at 1/4 and
1/16 of it, so per-sample cost is a pessimistic stand-in for the paper's model.

Measured per (batch, graph): one decode step = embedding, 14 x (add+RMSNorm, in_proj, conv step,
x_proj, selective state update with dt_proj inside, out_proj), add+RMSNorm, LM head, top-k/top-p
sampling (temperature 1, top_k 0, top_p 0.95: the sort of the nucleus filter is included).
- ops: the aten ops and kernels (aten ops that are neither views nor allocations, plus Triton
  launches) of one `model.step` (sampling not included), per step and per layer, counted with
  mamba_seq.inference.count_step_ops at batch 1 before the table.
- steps/s: --steps timed decode steps (--eager-steps for the eager rows: an eager step is
  launch-bound, milliseconds, so fewer are timed; the table's "timed" column says how many) after
  --warmup untimed ones (CUDA-synchronised wall clock);
  samples/s = batch * steps/s; "x realtime" = steps/s / 16000 (one stream of 16 kHz audio).
- peak memory: torch.cuda.max_memory_allocated during a full `generate` of 8000 steps, read after
  step 1000 and after step 8000 (the output buffer is allocated up front; the cache is updated in
  place): the two must be equal. On CPU, the process's max RSS instead (coarse).

    python benchmarks/generation.py [--json out.json] [--dtype bf16|fp32] [--batches 1 16 256]
    python benchmarks/generation.py --cpu-smoke         # tiny shapes on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mamba_seq import MambaConfig, MambaLMHeadModel  # noqa: E402
from mamba_seq.generation import generate, make_decode_step, sample_next  # noqa: E402
from mamba_seq.inference import count_step_ops  # noqa: E402

MODELS = {
    "sc09-small": dict(d_model=256, n_layer=14, d_state=16, d_conv=4, expand=2, vocab_size=256),
    "smoke": dict(d_model=32, n_layer=2, d_state=16, d_conv=4, expand=2, vocab_size=256),
}
SC09_SMALL_PARAMS = 6_198_016
SAMPLE_RATE = 16_000
MiB = 1024**2


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_decode(model, batch: int, graph: bool, steps: int, warmup: int, top_p: float) -> float:
    """Decode steps per second of one stream batch (the loop `generate` runs, minus its output copy)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(0)
    cache = model.allocate_inference_cache(batch)

    def sample(logits):
        return sample_next(logits[:, :vocab], 1.0, 0, top_p, gen)

    step = make_decode_step(model, cache, sample, gen, graph)
    tokens = torch.full((batch,), 128 % vocab, dtype=torch.long, device=device)
    for _ in range(warmup):
        tokens = step(tokens)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens = step(tokens)
    sync(device)
    return steps / (time.perf_counter() - t0)


@torch.no_grad()
def memory_over_generation(model, batch: int, graph: bool, marks: list[int]) -> dict[int, int]:
    """Peak memory read (without a sync) after each step count in `marks`, during one generate call."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    seen = {}

    def progress(done):
        if done in marks:
            seen[done] = peak_bytes(device)

    generate(model, batch, max(marks), first_token=128 % model.config.vocab_size, top_p=0.95, seed=0,
             cuda_graph=graph, progress=progress)
    return seen


@torch.no_grad()
def step_op_counts(model) -> dict:
    """Aten ops and kernels of one model.step at batch 1 (after one uncounted step, which computes
    the per-step constants), in total and per layer."""
    device = next(model.parameters()).device
    cache = model.allocate_inference_cache(1)
    ids = torch.full((1,), 128 % model.config.vocab_size, dtype=torch.long, device=device)
    model.step(ids, cache)
    c = count_step_ops(model, cache, ids)
    n = model.config.n_layer
    return dict(aten_ops=c["aten_ops"], kernels=c["kernels"], triton=c["triton"],
                per_layer_aten_ops=c["aten_ops"] / n, per_layer_kernels=c["kernels"] / n,
                ops=dict(c["ops"]))


def git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=root).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="sc09-small")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                    help="model weights and activations (the SSM state and the residual stay fp32)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--steps", type=int, default=1000, help="timed decode steps per CUDA-graph row")
    ap.add_argument("--eager-steps", type=int, default=200, help="timed decode steps per eager row")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--mem-steps", type=int, nargs=2, default=[1000, 8000])
    ap.add_argument("--no-graphs", action="store_true", help="eager only")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny model on CPU, batches 1 and 4, a few steps: checks the script, measures nothing")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny matmuls: threads only contend (shared CI cores)
        args.model, args.dtype, args.batches = "smoke", "fp32", [1, 4]
        args.steps, args.eager_steps, args.warmup, args.mem_steps, args.no_graphs = 10, 10, 2, [5, 20], True
    else:
        if not torch.cuda.is_available():
            ap.error("needs a CUDA device (or --cpu-smoke)")
        device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]

    config = MambaConfig(**MODELS[args.model])
    torch.manual_seed(0)
    model = MambaLMHeadModel(config).to(device=device, dtype=dtype).eval()
    n_params = model.num_parameters()
    if args.model == "sc09-small" and n_params != SC09_SMALL_PARAMS:
        raise SystemExit(f"sc09-small has {n_params} parameters, expected {SC09_SMALL_PARAMS}")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"model {args.model}: {MODELS[args.model]} -> {n_params:,} parameters; {args.dtype}; {dev_name}")
    t_start = time.perf_counter()

    ops = step_op_counts(model)
    print(f"one model.step: {ops['aten_ops']} aten ops, {ops['kernels']} kernels ({ops['triton']} Triton); per "
          f"layer {ops['per_layer_aten_ops']:g} aten ops, {ops['per_layer_kernels']:g} kernels (sampling not included)")

    rows = []
    graph_modes = [False] if args.no_graphs else [False, True]
    header = (f"{'batch':>6} {'graph':>6} {'timed':>6} {'steps/s':>10} {'samples/s':>12} {'x realtime':>11} "
              f"{'peak MiB @' + str(args.mem_steps[0]):>16} {'peak MiB @' + str(args.mem_steps[1]):>16}")
    print(header)
    for batch in args.batches:
        for graph in graph_modes:
            timed = args.steps if graph else args.eager_steps
            sps = time_decode(model, batch, graph, timed, args.warmup, top_p=0.95)
            mem = memory_over_generation(model, batch, graph, args.mem_steps)
            m0, m1 = (mem[k] / MiB for k in args.mem_steps)
            row = dict(batch=batch, cuda_graph=graph, timed_steps=timed, steps_per_s=sps,
                       samples_per_s=sps * batch,
                       realtime_factor=sps / SAMPLE_RATE,
                       peak_mib={str(k): mem[k] / MiB for k in args.mem_steps},
                       memory_grew=mem[args.mem_steps[1]] > mem[args.mem_steps[0]])
            rows.append(row)
            print(f"{batch:>6} {str(graph):>6} {timed:>6} {sps:>10.1f} {sps * batch:>12.0f} {sps / SAMPLE_RATE:>11.3f} "
                  f"{m0:>16.1f} {m1:>16.1f}" + ("   <- memory grew" if row["memory_grew"] else ""))

    meta = dict(
        device=dev_name, date=time.strftime("%Y-%m-%d"), commit=git_commit(), torch=torch.__version__,
        command="python benchmarks/generation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        model=args.model, config=MODELS[args.model], parameters=n_params, dtype=args.dtype,
        timed_steps=dict(cuda_graph=args.steps, eager=args.eager_steps), warmup_steps=args.warmup,
        step_ops=ops, wall_s=time.perf_counter() - t_start, sampling=dict(temperature=1.0, top_k=0, top_p=0.95),
        memory_measure="torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
    )
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta, results=rows), f, indent=1)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()

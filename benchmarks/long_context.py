"""Whole-model training steps at long sequence lengths on one GPU: seconds per step, tokens/s, peak memory.

One training step = forward + backward + AdamW step of a causal DNA LM, bf16 autocast with fp32
master weights, total tokens per step fixed (default 2^20: batch 64 x 2^14, 16 x 2^16, 4 x 2^18,
1 x 2^20). Longer sequences (2^22, 2^23) run with batch 1 in segments of --segment-len positions with
the exact state and its gradient passed between them (mamba_seq/long_sequence.py).

Models, side by side in one run:
  mamba        the product: MambaLMHeadModel, Triton scan, per-block activation checkpointing,
               the LM loss 65,536 positions at a time
  mamba-nockpt the same without activation checkpointing (until it runs out of memory)
  mamba-cuda   the same model and step as `mamba`, with mamba_ssm's CUDA selective scan swapped in
               (the extension `selective_scan_cuda`, built on the GPU machine; see device_scan.sh)
  transformer  a same-size pre-norm Transformer (d_model 256, 9 layers, 4 heads, MLP 4x, no
               positional encoding), PyTorch scaled_dot_product_attention (flash), checkpointed blocks
Tokens are random A/C/G/T ids: the step's cost does not depend on their values.

    python3 benchmarks/long_context.py [--models mamba,mamba-cuda,transformer] [--json out.json]
    python3 benchmarks/long_context.py --profile        # where time goes in one step at 2^20
    python3 benchmarks/long_context.py --cpu-smoke      # tiny shapes on the CPU: the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mamba_seq.mixer as mixer  # noqa: E402
from mamba_seq import MambaConfig, MambaLMHeadModel  # noqa: E402
from mamba_seq.long_sequence import chunked_lm_nll, segmented_lm_nll  # noqa: E402

GiB = 2**30
PRODUCT_SCAN = mixer.selective_scan  # the Triton scan (mamba-cuda swaps it out)
VOCAB = 10  # the DNA tokenizer's vocabulary (padded to 16 in the model)
ACGT = torch.tensor([5, 6, 7, 8])  # a stand-in for A/C/G/T ids (any four ids cost the same)


# -- models -----------------------------------------------------------------------------------------

def mamba_model(d_model: int, n_layer: int, checkpointing: bool) -> MambaLMHeadModel:
    model = MambaLMHeadModel(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB))
    model.backbone.set_activation_checkpointing(checkpointing)
    return model


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False))

    def forward(self, x):  # (batch, L, d) -> (batch, L, d)
        b, L, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, L, d))
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    def __init__(self, d_model: int, n_layer: int, heads: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(16, d_model)
        self.layers = nn.ModuleList(TransformerBlock(d_model, heads) for _ in range(n_layer))
        self.norm_f = nn.RMSNorm(d_model)

    def hidden(self, ids):
        x = self.embedding(ids)
        for layer in self.layers:
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
        return self.norm_f(x)


def use_cuda_scan():
    """Swap mamba_ssm's CUDA selective scan into the mixer (same arguments; no initial state)."""
    import selective_scan_cuda as ssc

    class CudaScan(torch.autograd.Function):  # what mamba_ssm's SelectiveScanFn does
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
            # as SelectiveScanFn: copies only where time is not contiguous; B, C (batch, N, L) as one group
            u, delta, B, C, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C, z))
            B, C = B.unsqueeze(1), C.unsqueeze(1)
            out, x, out_z = ssc.fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
            ctx.softplus = softplus
            return out_z

        @staticmethod
        def backward(ctx, dout):
            u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
            du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = ssc.bwd(
                u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out, None, ctx.softplus, False)[:8]
            return du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), dD, dz, ddelta_bias, None

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
             return_final_state=False, seq_idx=None, reverse=False):
        if initial_state is not None or return_final_state or seq_idx is not None or reverse:
            raise NotImplementedError("the CUDA baseline runs plain causal scans only")
        return CudaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    mixer.selective_scan = scan


# -- one training step ------------------------------------------------------------------------------

def make_step(name: str, model: nn.Module, segment_len: int | None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=next(model.parameters()).is_cuda)
    device = next(model.parameters()).device.type

    def step(ids, labels):
        with torch.autocast(device, dtype=torch.bfloat16):
            if name == "transformer":
                nll = chunked_lm_nll(model.hidden(ids), model.embedding.weight, labels)
            elif segment_len is not None and ids.shape[1] > segment_len:
                nll = segmented_lm_nll(model, ids, labels, segment_len)
            else:
                nll = chunked_lm_nll(model.backbone(ids), model.lm_head.weight, labels)
            loss = nll / labels.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, batch, L, steps, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = ACGT[torch.randint(0, 4, (batch, L), generator=g)].to(device)
    labels = torch.roll(ids, -1, dims=1)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loss = step(ids, labels)  # warm-up (compiles Triton kernels the first time)
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step(ids, labels)
        sync(device)
        times.append(time.perf_counter() - t0)
    finite = bool(torch.isfinite(loss))
    s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / GiB if device == "cuda" else float("nan")
    return {"s_per_step": s, "tokens_per_s": batch * L / s, "peak_GiB": peak, "finite": finite}


# -- where time goes --------------------------------------------------------------------------------

CATEGORIES = [  # (label, kernel-name pattern): first match wins
    ("selective scan (Triton)", r"scan|_carry_kernel|_fwd_state_kernel|_fwd_out_kernel|_bwd_state_kernel|_bwd_main_kernel"),
    ("causal conv1d", r"conv"),
    ("GEMMs: in/x/dt/out projections, LM head", r"gemm|nvjet|cutlass|xmma|sm90_|Kernel2|splitK"),
    ("optimizer (AdamW)", r"adam|multi_tensor|foreach"),
    ("LM loss (softmax, cross entropy)", r"softmax|nll|cross_entropy|log_softmax|logsumexp"),
    ("reductions (RMSNorm statistics, grad sums)", r"reduce|Reduce"),
    ("elementwise (norm scaling, SiLU, residual adds, casts, copies)", r"elementwise|vectorized|Elementwise|copy|Copy|fill|cat"),
]


def profile_step(step, batch, L, device) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    ids = ACGT[torch.randint(0, 4, (batch, L), generator=g)].to(device)
    labels = torch.roll(ids, -1, dims=1)
    step(ids, labels)
    sync(device)
    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step(ids, labels)
        sync(device)
    totals: dict[str, float] = {}
    for ev in prof.events():
        if cuda and ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and (ev.cpu_parent is not None or not ev.name.startswith("aten::")):
            continue  # CPU smoke: top-level aten ops only (no double counting)
        label = next((lab for lab, pat in CATEGORIES if re.search(pat, ev.name)), "other")
        us = ev.device_time if cuda else ev.cpu_time_total
        totals[label] = totals.get(label, 0.0) + us / 1e3  # us -> ms
    return sorted(totals.items(), key=lambda kv: -kv[1])


# -- main -------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mamba,mamba-nockpt,mamba-cuda,transformer")
    p.add_argument("--log2-lengths", default="14,16,18,20")
    p.add_argument("--log2-segmented", default="22,23", help="lengths run in segments, batch 1 ('' for none)")
    p.add_argument("--segment-len", type=int, default=1 << 20)
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens per step (batch = tokens / L)")
    p.add_argument("--transformer-max-log2", type=int, default=18, help="longer: estimated, not run")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row (median), after one warm-up")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=16)
    p.add_argument("--profile", action="store_true", help="only: where time goes in one mamba step at 2^20")
    p.add_argument("--json", type=Path)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (checks the script runs)")
    a = p.parse_args(argv)

    device = "cpu" if a.cpu_smoke else "cuda"
    if a.cpu_smoke:
        a.d_model, a.n_layer, a.tokens, a.steps, a.segment_len = 16, 2, 1 << 10, 1, 1 << 9
        a.log2_lengths, a.log2_segmented, a.transformer_max_log2 = "8,10", "11", 10
        a.models = ",".join(m for m in a.models.split(",") if m != "mamba-cuda")
    elif not torch.cuda.is_available():
        raise SystemExit("long_context.py measures a GPU; use --cpu-smoke on a CPU")
    torch.manual_seed(0)
    if device == "cuda":
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)

    if a.profile:
        L = 1 << 20 if not a.cpu_smoke else 1 << 10
        model = mamba_model(a.d_model, a.n_layer, True).to(device)
        step = make_step("mamba", model, None)
        rows = profile_step(step, max(1, a.tokens // L), L, device)
        total = sum(ms for _, ms in rows)
        print(f"\nwhere time goes: one training step, L = {L}, batch {max(1, a.tokens // L)}, d_model {a.d_model}, "
              f"{a.n_layer} layers, checkpointed (GPU kernel time {total:.0f} ms)")
        print("| kernels | ms | share |\n|---|---|---|")
        for label, ms in rows:
            print(f"| {label} | {ms:.1f} | {100 * ms / total:.1f}% |")
        return 0

    rows = []
    for name in a.models.split(","):
        if name == "mamba-cuda":
            try:
                use_cuda_scan()
            except ImportError as e:
                print(f"mamba-cuda skipped: {e} (build it with benchmarks/device_scan.sh)", flush=True)
                continue
        else:
            mixer.selective_scan = PRODUCT_SCAN
        torch.manual_seed(0)
        if name == "transformer":
            model = TransformerLM(a.d_model, 9 if a.n_layer == 16 else max(1, a.n_layer // 2)).to(device)
        else:
            model = mamba_model(a.d_model, a.n_layer, name != "mamba-nockpt").to(device)
        n_params = sum(p.numel() for p in model.parameters())
        lengths = [int(x) for x in a.log2_lengths.split(",") if x]
        segmented = [int(x) for x in a.log2_segmented.split(",") if x] if name == "mamba" else []
        for lg in lengths + segmented:
            L = 1 << lg
            batch = max(1, a.tokens // L)
            row = {"model": name, "params": n_params, "L": L, "batch": batch,
                   "segments": math.ceil(L / a.segment_len) if lg in segmented else 1}
            if name == "transformer" and lg > a.transformer_max_log2:
                row["note"] = "not run (quadratic: see the shorter lengths)"
                rows.append(row)
                continue
            step = make_step(name, model, a.segment_len if lg in segmented else None)
            try:
                row.update(measure(step, batch, L, a.steps, device))
            except torch.OutOfMemoryError:
                row["note"] = "out of memory"
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            except NotImplementedError as e:
                row["note"] = str(e)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row.get("note") == "out of memory":
                break  # longer lengths need more

    print(f"\nOne training step (fwd + bwd + AdamW), bf16 autocast, fp32 weights; {a.tokens} tokens per step "
          f"up to 2^{max(int(x) for x in a.log2_lengths.split(','))}, then batch 1")
    print("| model | params | L | batch | segments | s/step | tokens/s | peak GiB | finite |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "s_per_step" in r:
            print(f"| {r['model']} | {r['params']:,} | 2^{int(math.log2(r['L']))} | {r['batch']} | {r['segments']} | "
                  f"{r['s_per_step']:.3f} | {r['tokens_per_s']:,.0f} | {r['peak_GiB']:.1f} | {r['finite']} |")
        else:
            print(f"| {r['model']} | {r['params']:,} | 2^{int(math.log2(r['L']))} | {r['batch']} | {r['segments']} | "
                  f"{r.get('note', '')} | | | |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

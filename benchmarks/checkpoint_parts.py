"""Carry a model's weights through a channel that limits file sizes (the device tool brings back
files of at most 16 MiB): split a Lightning checkpoint into weights-only parts, and merge them back
into a checkpoint that `mamba-seq test|generate ckpt_path=...` loads (no optimizer state: it
cannot resume training, only evaluate and generate).

    python benchmarks/checkpoint_parts.py split RUN/checkpoints/best.ckpt OUT_DIR [--max-mib 15]
    python benchmarks/checkpoint_parts.py merge OUT_DIR/weights_part*.pt NEW_RUN/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

KEEP = ("hyper_parameters", "pytorch-lightning_version", "global_step", "epoch")


def split(ckpt: Path, out_dir: Path, max_mib: float = 15.0) -> list[Path]:
    """-> weights_part0.pt, ...: each a dict {"state_dict": some tensors, + KEEP keys}, each under max_mib."""
    full = torch.load(ckpt, map_location="cpu", weights_only=False)
    limit = max_mib * 2**20
    parts, current, size = [], {}, 0
    for name, tensor in full["state_dict"].items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            parts.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    parts.append(current)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = out_dir / f"weights_part{i}.pt"
        torch.save({"state_dict": part, **{k: full[k] for k in KEEP if k in full}}, path)
        paths.append(path)
    return paths


def merge(parts: list[Path], out: Path) -> Path:
    state, meta = {}, {}
    for path in sorted(parts):
        part = torch.load(path, map_location="cpu", weights_only=False)
        overlap = state.keys() & part["state_dict"].keys()
        if overlap:
            raise ValueError(f"{path}: tensors also in an earlier part: {sorted(overlap)[:3]}")
        state.update(part["state_dict"])
        meta.update({k: part[k] for k in KEEP if k in part})
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, **meta}, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("ckpt", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--max-mib", type=float, default=15.0)
    m = sub.add_parser("merge")
    m.add_argument("parts", type=Path, nargs="+")
    m.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "split":
        for p in split(args.ckpt, args.out_dir, args.max_mib):
            print(p, f"{p.stat().st_size / 2**20:.1f} MiB")
    else:
        print(merge(args.parts, args.out))


if __name__ == "__main__":
    main()

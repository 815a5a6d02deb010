"""Zero-shot variant effect scores from a causal DNA language model, and their evaluation.

The score of a variant is the log-likelihood ratio of its ALT window to its REF window under the
LM: log p(alt window) - log p(ref window), each the sum of the next-base log-probabilities over
the window (natural log). A damaging variant makes the sequence less likely, so the
pathogenicity score is -LLR. Windows come from `data_modules.variants.variant_windows`, so REF
has been checked against the reference and both windows have the same length and centre.

Evaluation: AUROC and AUPRC over the whole set, and split by variant kind (SNV / MNV / indel),
with torchmetrics' functional forms on all scores at once (never averaged per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from data_modules.tokenizers import DNATokenizer
from data_modules.variants import VariantWindow


def sequence_log_likelihood(lm: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch, W) token ids -> (batch,) sum over t >= 1 of log p(ids[t] | ids[:t]), fp32."""
    logits = lm(ids[:, :-1]).float()
    logp = F.log_softmax(logits, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(dim=1)


@torch.no_grad()
def zero_shot_llr(lm: torch.nn.Module, windows: list[VariantWindow], batch_size: int = 64,
                  tokenizer: DNATokenizer | None = None) -> torch.Tensor:
    """LLR alt vs ref for each window (same order), on the LM's device."""
    tok = tokenizer or DNATokenizer()
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    out = []
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            ref = torch.stack([torch.as_tensor(tok.encode(w.ref_seq)) for w in chunk]).to(device)
            alt = torch.stack([torch.as_tensor(tok.encode(w.alt_seq)) for w in chunk]).to(device)
            out.append(sequence_log_likelihood(lm, alt) - sequence_log_likelihood(lm, ref))
    finally:
        lm.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device=device)


def variant_metrics(scores: torch.Tensor, labels: torch.Tensor, kinds: list[str]) -> dict[str, float]:
    """AUROC / AUPRC of `scores` (higher = more likely class 1) overall and per variant kind;
    a group with a single class has no AUROC and is left out."""
    scores, labels = scores.detach().float().cpu(), labels.detach().long().cpu()
    groups = {"all": torch.ones(len(labels), dtype=torch.bool)}
    for kind in sorted(set(kinds)):
        groups[kind] = torch.tensor([k == kind for k in kinds], dtype=torch.bool)
    out: dict[str, float] = {}
    for name, sel in groups.items():
        y = labels[sel]
        out[f"{name}/n"] = int(sel.sum())
        if y.numel() == 0 or y.min() == y.max():
            continue
        out[f"{name}/auroc"] = float(binary_auroc(scores[sel], y))
        out[f"{name}/auprc"] = float(binary_average_precision(scores[sel], y))
    return out

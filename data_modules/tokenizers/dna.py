"""DNA tokenizer: one token per base, vectorised through a 256-entry byte lookup table.

ids: [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4, then A=5 C=6 G=7 T=8 N=9.
Lowercase (soft-masked) bases read as the same base; IUPAC ambiguity codes read as N and are
counted; any other byte is an error naming its position.
"""

from __future__ import annotations

import numpy as np
import torch

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
BASES = "ACGTN"
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_INVALID = -1


class DNATokenizer:
    pad_id, cls_id, sep_id, mask_id, unk_id = range(5)
    base_ids = {b: 5 + i for i, b in enumerate(BASES)}
    vocab_size = len(SPECIALS) + len(BASES)

    def __init__(self):
        table = np.full(256, _INVALID, dtype=np.int64)
        for base, i in self.base_ids.items():
            table[ord(base)] = table[ord(base.lower())] = i
        for code in IUPAC_AMBIGUOUS:
            table[ord(code)] = table[ord(code.lower())] = self.base_ids["N"]
        self._table = table
        iupac = np.zeros(256, dtype=bool)
        iupac[[ord(c) for c in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower()]] = True
        self._is_iupac = iupac
        self._tokens = list(SPECIALS) + list(BASES)
        complement = np.arange(self.vocab_size)
        for a, b in ("AT", "TA", "CG", "GC"):
            complement[self.base_ids[a]] = self.base_ids[b]
        self._complement = complement

    def padded_vocab_size(self, multiple: int = 8) -> int:
        return self.vocab_size + (-self.vocab_size) % multiple

    @staticmethod
    def _as_bytes(seq) -> np.ndarray:
        if isinstance(seq, np.ndarray):
            return seq.astype(np.uint8, copy=False)
        if isinstance(seq, str):
            seq = seq.encode("latin-1", errors="replace")
        return np.frombuffer(bytes(seq), dtype=np.uint8)

    def encode(self, seq, where: str = "", offset: int = 0, return_stats: bool = False, return_softmask: bool = False):
        """seq: str | bytes | uint8 array of length L -> int64 ids (L,)
        [, stats {"iupac_to_n", "soft_masked"}] [, softmask bool (L,)]
        `where` and `offset` (the position of seq[0] in its record) make errors name the place."""
        raw = self._as_bytes(seq)
        ids = self._table[raw]
        bad = np.flatnonzero(ids == _INVALID)
        if bad.size:
            pos = int(bad[0])
            char = chr(raw[pos])
            place = f"{where}: " if where else ""
            raise ValueError(
                f"{place}invalid character {char!r} at position {offset + pos} ({bad.size} invalid in all); "
                f"a DNA sequence may hold A C G T N, IUPAC codes {IUPAC_AMBIGUOUS} and their lowercase forms"
            )
        extra = []
        if return_stats:
            lower = raw >= ord("a")
            extra.append({"iupac_to_n": int(self._is_iupac[raw].sum()), "soft_masked": int(lower.sum())})
        if return_softmask:
            extra.append(raw >= ord("a"))
        return (ids, *extra) if extra else ids

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(self._tokens[i] for i in ids if not (skip_special and i < len(SPECIALS)))

    def reverse_complement(self, ids):
        """Reverse complement of token ids along the last axis (numpy array or torch tensor);
        specials are left as they are."""
        if isinstance(ids, torch.Tensor):
            table = torch.as_tensor(self._complement, device=ids.device)
            return table[ids.long()].flip(-1).to(ids.dtype)
        return self._complement[np.asarray(ids)][..., ::-1].copy()

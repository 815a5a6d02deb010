"""DNA tokenizer: one token per base, vectorised through a 256-entry byte lookup table.

ids: [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4, then A=5 C=6 G=7 T=8 N=9.
Lowercase (soft-masked) bases read as the same base; IUPAC ambiguity codes (R Y S W K M B D H V,
either case) read as N and are counted; any other byte (U, digits, '-', '*', '>', whitespace,
non-ASCII) is an error naming its position and the character.
"""

from __future__ import annotations

import numpy as np
import torch

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
BASES = "ACGTN"
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_INVALID = -1


class DNATokenizer:
    pad_id, cls_id, sep_id, mask_id, unk_id = range(len(SPECIALS))
    base_ids = {b: len(SPECIALS) + i for i, b in enumerate(BASES)}
    vocab_size = len(SPECIALS) + len(BASES)
    special_tokens = SPECIALS

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
        lower = np.zeros(256, dtype=bool)
        lower[[ord(c) for c in (BASES + IUPAC_AMBIGUOUS).lower()]] = True
        self._is_lower = lower
        self._tokens = list(SPECIALS) + list(BASES)
        complement = np.arange(self.vocab_size, dtype=np.int64)  # specials and N map to themselves
        for a, b in ("AT", "TA", "CG", "GC"):
            complement[self.base_ids[a]] = self.base_ids[b]
        self._complement = complement
        self._complement_t = torch.from_numpy(complement)

    def padded_vocab_size(self, multiple: int = 8) -> int:
        """vocab_size rounded up to a multiple (embedding tables sized for tensor cores)."""
        return self.vocab_size + (-self.vocab_size) % multiple

    @staticmethod
    def _as_bytes(seq, where: str, offset: int) -> np.ndarray:
        if isinstance(seq, np.ndarray):
            if seq.dtype != np.uint8:
                raise TypeError(f"encode() takes raw bytes as a uint8 array, got dtype {seq.dtype}")
            return seq.reshape(-1)
        if isinstance(seq, str):
            try:
                seq = seq.encode("ascii")
            except UnicodeEncodeError as err:  # name the character, not its UTF-8 bytes
                place = f"{where}: " if where else ""
                raise ValueError(
                    f"{place}invalid character {seq[err.start]!r} at position {offset + err.start} "
                    f"(non-ASCII); a DNA sequence may hold A C G T N, IUPAC codes {IUPAC_AMBIGUOUS} "
                    "and their lowercase forms"
                ) from None
        return np.frombuffer(memoryview(seq).cast("B"), dtype=np.uint8)

    def encode(
        self,
        seq: str | bytes | bytearray | np.ndarray,
        where: str = "",
        offset: int = 0,
        return_stats: bool = False,
        return_softmask: bool = False,
    ):
        """seq (length L) -> int64 ids (L,) [, stats dict] [, soft-mask bool array (L,)].

        stats: {"iupac_to_n": ambiguity codes read as N, "soft_masked": lowercase bases}.
        `where` (e.g. "genome.fa, record 'chr1'") and `offset` (the position of seq[0] in its
        record) make the error for an invalid character name the place."""
        raw = self._as_bytes(seq, where, offset)
        ids = self._table[raw]
        bad = np.flatnonzero(ids == _INVALID)
        if bad.size:
            pos = int(bad[0])
            code = int(raw[pos])
            what = f"invalid character {chr(code)!r}" if code < 128 else f"invalid non-ASCII byte 0x{code:02x}"
            place = f"{where}: " if where else ""
            raise ValueError(
                f"{place}{what} at position {offset + pos} ({bad.size} invalid in all); "
                f"a DNA sequence may hold A C G T N, IUPAC codes {IUPAC_AMBIGUOUS} and their lowercase forms"
            )
        if not (return_stats or return_softmask):
            return ids
        out = [ids]
        softmask = self._is_lower[raw]
        if return_stats:
            out.append({"iupac_to_n": int(np.count_nonzero(self._is_iupac[raw])),
                        "soft_masked": int(np.count_nonzero(softmask))})
        if return_softmask:
            out.append(softmask)
        return tuple(out)

    def decode(self, ids, skip_special: bool = False) -> str:
        """ids (numpy, torch or a sequence; flattened) -> string; specials as "[PAD]" etc. or skipped."""
        ids = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        n_special = len(SPECIALS)
        return "".join(self._tokens[i] for i in ids.tolist() if not (skip_special and i < n_special))

    def reverse_complement(self, ids):
        """Reverse complement of token ids along the last axis (numpy array or torch tensor, any
        leading shape, dtype kept): A<->T, C<->G, N and specials unchanged."""
        if isinstance(ids, torch.Tensor):
            table = self._complement_t.to(ids.device)
            return table[ids.long()].flip(-1).to(ids.dtype)
        ids = np.asarray(ids)
        return self._complement[ids][..., ::-1].astype(ids.dtype, copy=True)

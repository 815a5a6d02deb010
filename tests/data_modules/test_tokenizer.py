import numpy as np
import pytest
import torch

from data_modules import DNATokenizer

tok = DNATokenizer()
RC = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def rc_string(s: str) -> str:  # independent oracle: string-level reverse complement
    return s.translate(RC)[::-1]


def random_dna(n, seed=0, alphabet="ACGTN"):
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), n))


def test_round_trip():
    s = random_dna(1000)
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode(s).dtype == np.int64


def test_lowercase_soft_masking_reads_as_the_same_base_and_is_counted():
    s = random_dna(300, seed=1)
    masked = s[:100] + s[100:200].lower() + s[200:]
    ids, stats, mask = tok.encode(masked, return_stats=True, return_softmask=True)
    assert np.array_equal(ids, tok.encode(s))
    assert stats["soft_masked"] == 100 and mask[100:200].all() and not mask[:100].any()


def test_iupac_codes_become_n_and_are_counted():
    ids, stats = tok.encode("ACRYGTNkmB", return_stats=True)
    assert tok.decode(ids) == "ACNNGTNNNN"
    assert stats["iupac_to_n"] == 5


@pytest.mark.parametrize("bad,pos", [("ACG1T", 3), ("AC-GT", 2), ("ACGT*", 4), ("AC GT", 2), ("ACGU", 3)])
def test_invalid_characters_name_position_and_character(bad, pos):
    with pytest.raises(ValueError) as err:
        tok.encode(bad, where="genome.fa, record 'chr1'", offset=1000)
    msg = str(err.value)
    assert "genome.fa" in msg and "chr1" in msg and f"position {1000 + pos}" in msg and repr(bad[pos]) in msg


def test_reverse_complement_matches_string_oracle_and_is_an_involution():
    s = random_dna(257, seed=2)
    ids = tok.encode(s)
    rc = tok.reverse_complement(ids)
    assert tok.decode(rc) == rc_string(s)
    assert np.array_equal(tok.reverse_complement(rc), ids)
    t = torch.from_numpy(np.stack([ids, ids[::-1].copy()]))
    rct = tok.reverse_complement(t)
    assert torch.equal(tok.reverse_complement(rct), t)
    assert tok.decode(rct[0]) == rc_string(s)


def test_reverse_complement_leaves_specials():
    ids = np.array([tok.cls_id, 5, 6, tok.pad_id])
    assert tok.reverse_complement(ids).tolist() == [tok.pad_id, 7, 8, tok.cls_id]

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


def test_ids_and_vocab():
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
    assert tok.base_ids == {"A": 5, "C": 6, "G": 7, "T": 8, "N": 9}
    assert tok.vocab_size == 10 and tok.padded_vocab_size() == 16 and tok.padded_vocab_size(5) == 10


@pytest.mark.parametrize("seed", range(5))
def test_round_trip(seed):
    s = random_dna(1000 + seed, seed=seed)
    ids = tok.encode(s)
    assert ids.dtype == np.int64 and ids.shape == (len(s),)
    assert tok.decode(ids) == s
    assert np.array_equal(tok.encode(s.encode()), ids)
    assert np.array_equal(tok.encode(np.frombuffer(s.encode(), dtype=np.uint8)), ids)
    assert tok.decode(torch.from_numpy(ids)) == s


def test_empty_sequence():
    assert tok.encode("").shape == (0,) and tok.decode(np.zeros(0, dtype=np.int64)) == ""


def test_lowercase_soft_masking_reads_as_the_same_base_and_is_counted():
    s = random_dna(300, seed=1)
    masked = s[:100] + s[100:200].lower() + s[200:]
    ids, stats, mask = tok.encode(masked, return_stats=True, return_softmask=True)
    assert np.array_equal(ids, tok.encode(s))
    assert stats == {"iupac_to_n": 0, "soft_masked": 100}
    assert mask.dtype == bool and mask[100:200].all() and not mask[:100].any() and not mask[200:].any()


def test_iupac_codes_become_n_and_are_counted():
    ids, stats = tok.encode("ACRYGTNkmBswdhvN", return_stats=True)
    assert tok.decode(ids) == "ACNNGTNNNNNNNNNN"
    assert stats == {"iupac_to_n": 10, "soft_masked": 7}
    every = "RYSWKMBDHV"
    assert (tok.encode(every + every.lower()) == tok.base_ids["N"]).all()


@pytest.mark.parametrize(
    "bad,pos", [("ACG1T", 3), ("AC-GT", 2), ("ACGT*", 4), ("AC GT", 2), ("ACGU", 3), ("A>CG", 1), ("AC\nG", 2),
                ("ACGu", 3), ("AXGT", 1)],
)
def test_invalid_characters_name_position_and_character(bad, pos):
    with pytest.raises(ValueError) as err:
        tok.encode(bad, where="genome.fa record chr1", offset=1000)
    msg = str(err.value)
    assert "genome.fa record chr1" in msg and f"position {1000 + pos}" in msg and repr(bad[pos]) in msg


def test_non_ascii_is_named():
    with pytest.raises(ValueError, match=r"'é' at position 2"):
        tok.encode("ACéGT")
    with pytest.raises(ValueError, match=r"non-ASCII byte 0xc3 at position 2"):
        tok.encode("ACéGT".encode())


def test_non_byte_arrays_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        tok.encode(np.array([65, 67], dtype=np.int64))


def test_decode_specials():
    ids = [tok.cls_id, 5, 6, tok.sep_id, tok.mask_id, 7, tok.pad_id, tok.unk_id]
    assert tok.decode(ids) == "[CLS]AC[SEP][MASK]G[PAD][UNK]"
    assert tok.decode(ids, skip_special=True) == "ACG"
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([5, 10])


def test_reverse_complement_matches_string_oracle_and_is_an_involution():
    s = random_dna(257, seed=2)
    ids = tok.encode(s)
    rc = tok.reverse_complement(ids)
    assert tok.decode(rc) == rc_string(s)
    assert np.array_equal(tok.reverse_complement(rc), ids)
    t = torch.from_numpy(np.stack([ids, ids[::-1].copy()]))
    rct = tok.reverse_complement(t)
    assert torch.equal(tok.reverse_complement(rct), t)
    assert tok.decode(rct[0]) == rc_string(s) and tok.decode(rct[1]) == rc_string(s[::-1])


def test_reverse_complement_any_leading_shape_keeps_dtype():
    ids = tok.encode(random_dna(2 * 3 * 17, seed=3)).reshape(2, 3, 17)
    for x in (ids.astype(np.int32), torch.from_numpy(ids).to(torch.int16)):
        y = tok.reverse_complement(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        for i in range(2):
            for j in range(3):
                assert tok.decode(y[i, j]) == rc_string(tok.decode(x[i, j]))


def test_reverse_complement_leaves_specials():
    ids = np.array([tok.cls_id, 5, 6, 9, tok.pad_id])
    assert tok.reverse_complement(ids).tolist() == [tok.pad_id, 9, 7, 8, tok.cls_id]
    assert tok.reverse_complement(torch.tensor(ids)).tolist() == [tok.pad_id, 9, 7, 8, tok.cls_id]

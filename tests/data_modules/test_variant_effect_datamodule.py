"""VariantDataModule on the bundled ClinVar BRCA1 set: counts, block split, windows, filters."""

import numpy as np
import pytest

from data_modules import VariantDataModule
from data_modules.variant_effect import coding_region
from mamba_seq.cli import asset_path


def make(**kw) -> VariantDataModule:
    args = dict(variants=asset_path("clinvar_brca1_GRCh38.vcf.gz"), reference=asset_path("ref_brca1.fa"),
                contigs={"17": ["ref_brca1", 43044296]}, window=64, batch_size=64)
    args.update(kw)
    dm = VariantDataModule(**args)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def blocks():
    return make()


def test_every_labelled_variant_lands_in_one_split_and_blocks_stay_whole(blocks):
    sets = blocks.sets
    # 7,639 labelled records in the ClinVar file (tests/data_modules/test_variants.py checks the
    # reader against the TSV); none is lost to the windows, each is in exactly one split
    assert sum(len(s) for s in sets.values()) == 7639
    keys = {p: {(w.variant.chrom, w.variant.pos, w.variant.ref, w.variant.alt) for w in s.windows}
            for p, s in sets.items()}
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    block = {p: {(pos - 1) // 1000 for _, pos, _, _ in k} for p, k in keys.items()}
    assert not (block["train"] & block["val"] or block["train"] & block["test"] or block["val"] & block["test"])
    for s in sets.values():
        labels = {w.variant.label for w in s.windows}
        assert labels == {0, 1}


def test_a_random_split_shares_positions_that_the_block_split_keeps_apart():
    rnd = make(split="random")
    pos = {p: {w.variant.pos for w in s.windows} for p, s in rnd.sets.items()}
    assert pos["train"] & pos["test"]  # the leak the block split exists for


def test_batches_hold_ref_and_alt_windows_that_differ_only_from_the_variant_on(blocks):
    batch = next(iter(blocks.test_dataloader()))
    ref, alt, centre = batch["ref_ids"], batch["alt_ids"], batch["centre"]
    assert ref.shape == alt.shape == (64, 64) and (centre == 32).all()
    assert (ref[:, :32] == alt[:, :32]).all()  # same left flank
    for i in range(64):
        r, a = batch["ref"][i], batch["alt"][i]
        if len(r) == len(a):  # substitutions: the windows differ exactly at the changed bases
            diff = np.flatnonzero((ref[i] != alt[i]).numpy())
            expected = [32 + j for j in range(len(r)) if r[j] != a[j] and 32 + j < 64]
            assert diff.tolist() == expected


def test_kinds_filter_and_predict_split():
    dm = make(kinds=["SNV"], predict_split="all")
    assert {w.variant.kind for s in dm.sets.values() for w in s.windows} == {"SNV"}
    assert len(dm.predict_dataloader().dataset) == sum(len(s) for s in dm.sets.values())


def test_coding_region_reads_sequence_ontology_consequences():
    assert coding_region("SO:0001583|missense_variant,SO:0001627|intron_variant") == "coding"
    assert coding_region("SO:0001627|intron_variant,SO:0001624|3_prime_UTR_variant") == "non-coding"
    assert coding_region(None) == coding_region(".") == "unknown"


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="data.split"):
        VariantDataModule(variants="x.vcf", reference="y.fa", split="chromosome")
    with pytest.raises(ValueError, match="data.kinds"):
        VariantDataModule(variants="x.vcf", reference="y.fa", kinds=["SNP"])
    with pytest.raises(ValueError, match="not found"):
        VariantDataModule(variants=str(tmp_path / "missing.vcf"), reference="y.fa").setup()


def test_table_input_reads_the_annotation_column(shared_data):
    """The labelled TSV of the same ClinVar records: labels from its column, coding/non-coding from
    its consequence column, the same coding variants as the VCF's MC; a missing column is named."""
    table = shared_data / "variants" / "brca1_clinvar" / "clinvar_brca1_labeled.tsv"
    cols = dict(variants=str(table), pos_column="pos_grch38", id_column="clinvar_variation_id", window=32)
    dm = make(annotation_column="molecular_consequence", **cols)
    from_table = {w.variant.id: r for s in dm.sets.values() for w, r in zip(s.windows, s.regions)}
    from_vcf = {w.variant.id: r  # VCF ID = ClinVar variation id
                for s in make(window=32).sets.values() for w, r in zip(s.windows, s.regions)}
    shared = from_table.keys() & from_vcf.keys()
    assert len(shared) > 7000 and all(from_table[k] == from_vcf[k] for k in shared)
    with pytest.raises(ValueError, match="no column 'consequence'"):
        make(annotation_column="consequence", **cols)

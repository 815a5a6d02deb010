"""Lightning DataModules and tokenizers. Knows no model."""

from .fasta import FastaFile, open_fasta, scan_fasta
from .fasta_pretraining import FastaDataModule
from .labelled_sequences import LabelledSequenceDataModule
from .seq_len_warmup import SeqLenWarmup
from .tokenizers import DNATokenizer
from .variant_effect import VariantDataModule

__all__ = [
    "DNATokenizer", "FastaDataModule", "LabelledSequenceDataModule", "SeqLenWarmup", "VariantDataModule", "FastaFile",
    "open_fasta", "scan_fasta",
]

"""Lightning DataModules and tokenizers. Knows no model."""

from .fasta import FastaFile, open_fasta, scan_fasta
from .fasta_pretraining import FastaDataModule
from .labelled_sequences import LabelledSequenceDataModule
from .tokenizers import DNATokenizer

__all__ = ["DNATokenizer", "FastaDataModule", "LabelledSequenceDataModule", "FastaFile", "open_fasta", "scan_fasta"]

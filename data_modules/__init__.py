"""Lightning DataModules and tokenizers. Knows no model."""

from .fasta import FastaFile, open_fasta, scan_fasta
from .fasta_pretraining import FastaDataModule
from .tokenizers import DNATokenizer

__all__ = ["DNATokenizer", "FastaDataModule", "FastaFile", "open_fasta", "scan_fasta"]

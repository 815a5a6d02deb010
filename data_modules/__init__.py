"""Lightning DataModules and tokenizers. Knows no model."""

from .audio import AudioCodec, AudioDataModule, read_audio
from .fasta import FastaFile, open_fasta, scan_fasta
from .fasta_pretraining import FastaDataModule
from .fasta_stream import FastaStreamDataModule  # noqa: F401
from .labelled_sequences import LabelledSequenceDataModule
from .seq_len_warmup import SeqLenWarmup
from .tokenizers import DNATokenizer
from .variant_effect import VariantDataModule

__all__ = [
    "DNATokenizer", "FastaDataModule", "LabelledSequenceDataModule", "SeqLenWarmup", "VariantDataModule", "FastaFile",
    "open_fasta", "scan_fasta", "AudioCodec", "AudioDataModule", "read_audio",
]

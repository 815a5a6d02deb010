from .dna import DNATokenizer

__all__ = ["DNATokenizer"]

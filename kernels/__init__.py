"""Sequence-mixing kernels: each op as a float64 oracle, a chunked PyTorch reference and a
Triton kernel, behind one autograd-aware function. Knows nothing of models."""

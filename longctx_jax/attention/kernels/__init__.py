"""Pallas kernels for attention: block-sparsity metadata, flash forward / backward, splash (TPU)."""

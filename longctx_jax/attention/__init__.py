"""Attention variants as pure functions over `[batch, seq, heads, head_dim]` arrays."""

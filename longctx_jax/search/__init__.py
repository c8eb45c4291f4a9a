"""Searches over model settings (LongRoPE's evolutionary rescale-factor search)."""

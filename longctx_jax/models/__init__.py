"""Models: the NNX decoder, loaders for pretrained Llama-family weights, KV-cache generation."""

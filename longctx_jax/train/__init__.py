"""Training: optimizer, jitted steps, Orbax checkpoints, the training loop."""

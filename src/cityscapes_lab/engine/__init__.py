"""Training and inference: the optimizer, the loss, the loop, checkpoints."""

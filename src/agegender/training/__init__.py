"""Training: batches, losses, the config-driven engine, checkpoints and distributed runs (needs the `train` extra)."""

"""Training engine: Lightning module, run folders, checkpoints, weight transfer, fitting."""

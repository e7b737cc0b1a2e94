"""Training and inference engine: trainer, checkpoints, solver, evaluation loop."""

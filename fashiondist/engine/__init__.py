"""The training engine: the accelerate loop, LR schedule, checkpoints and resume, evaluation on every rank."""

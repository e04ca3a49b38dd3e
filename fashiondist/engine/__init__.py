"""The training engine: device-resident batches and augmentation, the accelerate loop, LR schedule,
checkpoints and resume, evaluation on every rank."""

"""The engine: the checkpoint schema, optimizer and schedule, the training step and loop, the evaluation loop, run logging, the run folder and torchrun."""

"""Studies built on the engine: the loss-comparison runner and the benchmark."""

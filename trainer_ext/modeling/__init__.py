"""Models: the embedded default model, loading with quantization and dtype, int8 on the CPU, training
methods."""

"""Measurements of trainer_ext (speed, memory, loading, the demo under load, GPU memory), run as
`python -m benchmarks.<name>` from the repository root; not part of the installed package."""

"""Inference: constrained label scoring, greedy generation, calibration, and the `Classifier`."""

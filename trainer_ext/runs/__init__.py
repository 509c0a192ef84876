"""The run directory of a training run: its record (`RunInfo`, `run.json`), saving and loading it back."""

from trainer_ext.runs.info import DataSource, RunDirError, RunInfo

__all__ = ["DataSource", "RunDirError", "RunInfo"]

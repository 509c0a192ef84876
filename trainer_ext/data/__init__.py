"""Labelled messages: file readers, row checks with file/row errors, and the splits of a recipe."""

from trainer_ext.data.examples import Example, balanced_sample, load_examples
from trainer_ext.data.readers import DataError
from trainer_ext.data.splits import DataSettings, load_split

__all__ = ["DataError", "DataSettings", "Example", "balanced_sample", "load_examples", "load_split"]

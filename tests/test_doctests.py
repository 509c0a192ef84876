"""The `>>>` examples in docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = ["trainer_ext.metrics", "trainer_ext.scoring", "trainer_ext.int8_cpu", "trainer_ext.config"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0

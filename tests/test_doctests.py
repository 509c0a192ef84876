"""Every `>>>` example in the package's docstrings runs and gives what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import trainer_ext


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(trainer_ext.__path__, "trainer_ext."))


MODULES = _modules()


def _has_examples(name: str) -> bool:
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    return any(test.examples for test in tests)


@pytest.mark.parametrize("name", [name for name in MODULES if _has_examples(name)])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_the_modules_with_examples_are_found():
    # The collator, the metrics, the recipes, the tasks and the vocabulary carry runnable examples.
    with_examples = {name for name in MODULES if _has_examples(name)}
    for name in (
        "trainer_ext.training.collator",
        "trainer_ext.evaluation.metrics",
        "trainer_ext.training.recipe",
        "trainer_ext.tasks.task",
        "trainer_ext.vocabulary",
    ):
        assert name in with_examples

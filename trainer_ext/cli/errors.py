"""The errors a user can cause, which every command prints as one line (never a traceback)."""

from __future__ import annotations

from trainer_ext.data import DataError
from trainer_ext.hub.errors import HubError
from trainer_ext.inference.batch import PredictError
from trainer_ext.memory import EstimateError
from trainer_ext.modeling.embedded import EmbeddedModelError
from trainer_ext.modeling.settings import ModelLoadError
from trainer_ext.runs.info import RunDirError
from trainer_ext.tasks import TaskError
from trainer_ext.training.recipe import RecipeError
from trainer_ext.training.tokenization import EncodingError
from trainer_ext.training.weights import WeightsError

#: Every user-caused error class; each one's message says what is wrong, where, and what to do. `OSError`
#: (a path that cannot be read or written) is printed as its one-line message too.
USER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    DataError,
    EmbeddedModelError,
    EncodingError,
    EstimateError,
    HubError,
    ModelLoadError,
    PredictError,
    RecipeError,
    RunDirError,
    TaskError,
    WeightsError,
)

"""Sharing on the Hugging Face Hub: push a run or the demo Space with its card, download a pushed run.

The card templates are package data (`trainer_ext/hub/templates/`, also reachable as the repository's
top-level `hub_cards/`), so pushing works from an installed wheel.
"""

from trainer_ext.hub.errors import HubError
from trainer_ext.hub.repo import PushResult, download_model_dir, push_run, push_space, select_run_files

__all__ = ["HubError", "PushResult", "download_model_dir", "push_run", "push_space", "select_run_files"]

"""`LabelArguments`: the training keys of label fine-tuning, beside `TrainingArguments`' own.

The fields here are the project's: its options (how evaluation decodes labels) and the defaults where
the reference recipe differs from `TrainingArguments`. `LabelTrainingArguments` (in
`trainer_ext.training.trainer`) combines them with every `TrainingArguments` field. This module imports
nothing heavy, so `trainer-ext train --help` lists these keys without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer_ext.vocabulary import DECODINGS, EVAL_DECODINGS, choice_error


@dataclass
class LabelArguments:
    """The project's training keys and defaults.

    Defaults differ from `TrainingArguments` where the reference recipe differs: bitsandbytes 8-bit Adam
    (``optim="adamw_bnb_8bit"``), learning rate 2e-4, linear schedule with a short warm-up, length-grouped
    batches, no checkpoints unless asked.

    Args:
        eval_decoding (`str`, *optional*, defaults to `"constrained"`):
            How eval and prediction turn the model's output into labels: ``"constrained"``, ``"generate"`` or
            ``"both"`` (constrained metrics under ``eval_*``, generate ones under ``eval_generate_*``).
    """

    output_dir: str | None = field(default="runs/label-trainer", metadata={"help": "Where to write the run."})
    eval_decoding: str = field(
        default="constrained",
        metadata={
            "help": "Eval/prediction decoding: 'constrained' (label scoring), 'generate' (greedy) or 'both'."
        },
    )
    optim: str = field(
        default="adamw_bnb_8bit", metadata={"help": "Optimizer; default: bitsandbytes 8-bit Adam."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warm-up: steps, or a fraction of all steps if < 1."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "'group_by_length' batches samples of similar length."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "'no', 'steps' or 'epoch'."})

    def check_label_arguments(self) -> None:
        """Refuse values of these keys that cannot work (raises `ValueError` naming the key)."""
        error = choice_error("eval_decoding", self.eval_decoding, EVAL_DECODINGS)
        if error:
            raise ValueError(error)
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            value = getattr(self, key, 1)
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}.")

    @property
    def decodings(self) -> tuple[str, ...]:
        """The decoding modes evaluation runs, the first one reported without a prefix."""
        return DECODINGS if self.eval_decoding == "both" else (self.eval_decoding,)

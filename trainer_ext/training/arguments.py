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
    class_weights: str | None = field(
        default="none",
        metadata={
            "help": "Weight of each class in the loss: none, balanced (n_samples / (n_classes * n_class)), "
            "or a mapping label -> weight (YAML, or JSON on the command line: "
            '\'{"hate": 5, "offensive": 1}\').'
        },
    )
    train_sampling: str = field(
        default="default",
        metadata={
            "help": "default (train_sampling_strategy decides), or balanced: draw every class equally often "
            "per epoch, with replacement."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without improving metric_for_best_model (needs "
            "load_best_model_at_end and an eval_strategy)."
        },
    )
    tune_decision_bias: bool = field(
        default=False,
        metadata={
            "help": "Fit one log-probability offset per label on the dev set (validation_split) to maximise "
            "metric_for_best_model (default macro_f1); stored in task.json and applied by every predictor."
        },
    )
    share_prompt_prefix: bool = field(
        default=True,
        metadata={
            "help": "Run the ids every sample of a training batch starts with (the instruction) once per "
            "batch and let every sample attend to them (same loss and gradients; off under "
            "gradient_checkpointing)."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "help": "Round each training batch's padded length up to a multiple of this (e.g. 16): fewer "
            "distinct shapes, so the CPU's matmul kernels and the heap settle instead of growing with "
            "every new length."
        },
    )
    max_tokens_per_pass: int | None = field(
        default=None,
        metadata={
            "help": "Run a training batch whose padded tokens (rows x length) exceed this as several passes "
            "of fewer rows, gradients accumulated within the step: the same loss and update, less activation "
            "memory for the longest batches (one process on one device, not DeepSpeed or LOMO; elsewhere "
            "batches run whole). Each extra pass costs time: on the main job 320 (which splits its few "
            "longest batches) cut the peak RSS from 1,569 to 1,436 MB at no measurable cost in time, 256 to "
            "1,431 MB for 616 instead of 534 s of training. The main recipe sets 320; a large value such as "
            "100000 turns the split off."
        },
    )
    release_host_memory: bool = field(
        default=False,
        metadata={
            "help": "Training on the CPU under glibc: fix malloc's mmap threshold at 1 MiB, so that freed "
            "large tensors go back to the system instead of piling up in the heap (for the whole process; "
            "MALLOC_MMAP_THRESHOLD_ in the environment wins), and hand the heap's free pages back after "
            "every optimizer step (malloc_trim). Measured on the main job: alone, 59 MB less "
            "peak over 10 steps and no less over a whole run; with pad_to_multiple_of 16, a whole-run peak "
            "of 1,454 instead of 1,759-1,779 MB. The main recipe sets both."
        },
    )

    def check_label_arguments(self) -> None:
        """Refuse values of these keys that cannot work (raises `ValueError` naming the key)."""
        error = choice_error("eval_decoding", self.eval_decoding, EVAL_DECODINGS)
        if error:
            raise ValueError(error)
        from trainer_ext.training.weights import TRAIN_SAMPLINGS, parse_class_weights

        self.class_weights = parse_class_weights(self.class_weights)
        error = choice_error("train_sampling", self.train_sampling, TRAIN_SAMPLINGS)
        if error:
            raise ValueError(error)
        if self.train_sampling == "balanced" and self.class_weights != "none":
            raise ValueError(
                "train_sampling balanced and class_weights both correct for imbalance; use one of them "
                "(the README's 'Imbalanced data' says which works better)."
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be at least 1, got {self.early_stopping_patience}."
            )
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            value = getattr(self, key, 1)
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}.")
        if self.max_tokens_per_pass is not None and self.max_tokens_per_pass < 1:
            raise ValueError(f"max_tokens_per_pass must be at least 1, got {self.max_tokens_per_pass}.")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be at least 1, got {self.pad_to_multiple_of}.")
        smoothing = getattr(self, "label_smoothing_factor", 0.0)
        if not 0.0 <= smoothing <= 1.0:  # also refuses nan
            raise ValueError(
                "label_smoothing_factor must be between 0 and 1 (0 turns it off; 0.1 is usual), "
                f"got {smoothing}."
            )
        if getattr(self, "learning_rate", 1.0) < 0:
            raise ValueError(f"learning_rate must not be negative, got {self.learning_rate}.")
        if getattr(self, "max_steps", -1) <= 0 and getattr(self, "num_train_epochs", 1.0) <= 0:
            raise ValueError(
                f"num_train_epochs must be positive (or set max_steps), got {self.num_train_epochs}."
            )

    @property
    def decodings(self) -> tuple[str, ...]:
        """The decoding modes evaluation runs, the first one reported without a prefix."""
        return DECODINGS if self.eval_decoding == "both" else (self.eval_decoding,)

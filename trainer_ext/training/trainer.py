"""`LabelTrainer`: a `transformers.Trainer` that trains a causal LM to generate labels, and evaluates them.

It overrides only what it must:

- `compute_loss`: cross-entropy on the completion tokens only, with the LM head applied only at the
  positions that predict a completion token, and the prompt prefix every sample of a batch shares run once
  (see `trainer_ext.training.loss`). Under bf16/fp16 mixed precision it runs in autocast with PEFT's input
  casts off (see `LabelTrainer.mixed_precision`).
- `evaluate`: the usual loss, then the labels the model *produces* for each eval sample (constrained
  scoring and/or greedy generation, see `trainer_ext.inference.scoring`), scored by `classification_metrics`.
  Under data parallelism each process decodes a strided share of the samples and the results are
  gathered once per sample, so the metrics equal those of a single-process run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import OptimizerNames

from trainer_ext.inference.decision import apply_decision_bias
from trainer_ext.inference.scoring import LabelScores, generate_labels, score_labels
from trainer_ext.tasks import LabelTask
from trainer_ext.training.arguments import LabelArguments
from trainer_ext.training.collator import LabelCollator
from trainer_ext.training.host_memory import fix_mmap_threshold, trim_heap
from trainer_ext.training.loss import completion_loss
from trainer_ext.training.tokenization import encode_dataset, encode_prompts
from trainer_ext.vocabulary import DECODINGS

logger = logging.getLogger(__name__)


class _TrimHeapCallback(TrainerCallback):
    """Hands the heap's free pages back to the system after every optimizer step (`trim_heap`), so that a
    long batch's activations do not stay resident as free heap after it (``release_host_memory``)."""

    def on_step_end(self, args, state, control, **kwargs):
        trim_heap()


@dataclass
class LabelTrainingArguments(LabelArguments, TrainingArguments):
    """`TrainingArguments` with the defaults and options of label fine-tuning (see `LabelArguments`)."""

    def __post_init__(self) -> None:
        self.check_label_arguments()
        # bf16 on a machine without CUDA means bf16 autocast on the CPU, which TrainingArguments only
        # accepts with use_cpu set.
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True
        self.prediction_loss_only = True
        super().__post_init__()


class LabelDataset(Dataset):
    """Labelled examples with their training encodings and their prompts (for decoding).

    Args:
        examples (`Sequence[Example]`): Objects with `text`, `label` and `source` (see `data.Example`).
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Template and verbalizers.
        max_length (`int`): Maximum sequence length; only messages are shortened.
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps.
        class_weights (`dict[str, float]`, *optional*): Loss weight per label; each sample then carries its
            label's weight as `sample_weight` (see `trainer_ext.training.weights`).
        variation_seed (`int`, *optional*): A training set's seed of the prompt variation the task asks for
            (`trainer_ext.tasks.variation`); the prompts kept for decoding are always the task's own.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        tokenizer,
        task: LabelTask,
        max_length: int,
        truncation_side: str = "right",
        class_weights: dict[str, float] | None = None,
        variation_seed: int | None = None,
    ) -> None:
        self.examples = list(examples)
        self.class_weights = class_weights
        self.encoded = encode_dataset(
            tokenizer, task, self.examples, max_length, truncation_side, variation_seed
        )
        texts = [example.text for example in self.examples]
        encoded_prompts = encode_prompts(tokenizer, task, texts, max_length, truncation_side)
        self.prompts = [ids for ids, _ in encoded_prompts]
        self.truncated = sum(cut for _, cut in encoded_prompts)  # messages shortened to fit max_length

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.class_weights is None:
            return self.encoded[index]
        return {**self.encoded[index], "sample_weight": self.class_weights[self.examples[index].label]}


@contextlib.contextmanager
def _allow_trained_norms(model):
    """Let `Trainer` accept a quantized model whose trainable parameters are its own 1-D ones (``norms``).

    `Trainer.__init__` refuses any quantized model without PEFT adapters, assuming nothing in it can be
    trained; the ``norms`` method of the reference study trains the unquantized norm weights of an 8-bit
    model, which works. The check stays in force for every other model.
    """
    import transformers.trainer as hf_trainer

    quantized = getattr(model, "is_quantized", False) and not hasattr(model, "peft_config")
    if not (quantized and any(p.requires_grad for p in model.parameters())):
        yield
        return
    original = hf_trainer.validate_quantization_for_training
    hf_trainer.validate_quantization_for_training = lambda model: None
    try:
        yield
    finally:
        hf_trainer.validate_quantization_for_training = original


class LabelTrainer(Trainer):
    """A `Trainer` for label generation: completion-only loss and label metrics of generated answers.

    Args:
        model (`PreTrainedModel` or `PeftModel`): The model, e.g. from `trainer_ext.load_model`.
        args (`LabelTrainingArguments`): Training arguments.
        task (`LabelTask`): Labels and prompt template; needed to decode labels in evaluation.
        train_dataset (`LabelDataset`, *optional*): Training samples.
        eval_dataset (`LabelDataset` or `dict[str, LabelDataset]`, *optional*): Evaluation sets.
        processing_class (`PreTrainedTokenizerBase`): The tokenizer.
        **kwargs: Passed to `Trainer` (callbacks, ...). The default collator is a `LabelCollator`.
    """

    def __init__(
        self, model=None, args: LabelTrainingArguments | None = None, task: LabelTask | None = None, **kwargs
    ):
        if task is None:
            raise ValueError(
                "LabelTrainer needs the task (labels and prompt template) to decode labels in eval."
            )
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None:
            raise ValueError("LabelTrainer needs the tokenizer as processing_class.")
        multiple = getattr(args, "pad_to_multiple_of", None)
        kwargs.setdefault("data_collator", LabelCollator(tokenizer, pad_to_multiple_of=multiple))
        with _allow_trained_norms(model):
            super().__init__(model=model, args=args or LabelTrainingArguments(), **kwargs)
        self.task = task
        self._split_batches = 0  # batches run as passes of fewer rows (max_tokens_per_pass), per train()
        if getattr(self.args, "release_host_memory", False) and self.args.device.type == "cpu":
            fix_mmap_threshold()
            self.add_callback(_TrimHeapCallback())
        # Our loss divides by the completion-token count the Trainer gathers across accumulation steps and
        # devices (`num_items_in_batch`); this flag makes the Trainer compute that count and not rescale.
        self.model_accepts_loss_kwargs = True

    def _get_train_sampler(self, train_dataset=None):
        """A class-balanced sampler with ``train_sampling: balanced``, else the default."""
        if self.args.train_sampling != "balanced":
            return super()._get_train_sampler(train_dataset)
        from torch.utils.data import WeightedRandomSampler

        from trainer_ext.training.weights import sampler_weights

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        weights = sampler_weights(dataset.examples)  # every class drawn equally often per epoch
        generator = torch.Generator().manual_seed(self.args.seed)
        return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, run as several passes of fewer rows when the batch holds more padded
        tokens than ``max_tokens_per_pass``; their losses are summed, as their gradients are."""
        chunks = self._row_chunks(inputs, num_items_in_batch)
        if chunks is None:
            return super().training_step(model, inputs, num_items_in_batch)
        self._split_batches += 1
        # Each pass divides its summed loss by the whole batch's completion-token count (num_items_in_batch),
        # so the passes' gradients add up to the whole batch's.
        step = super().training_step
        return sum(step(model, chunk, num_items_in_batch) for chunk in chunks)

    def train(self, *args, **kwargs):
        """`Trainer.train`, then a log of how many batches ran as passes of fewer rows."""
        self._split_batches = 0
        output = super().train(*args, **kwargs)
        if self._split_batches:
            logger.info(
                "%d batch(es) over max_tokens_per_pass=%d padded tokens ran as passes of fewer rows.",
                self._split_batches,
                self.args.max_tokens_per_pass,
            )
        return output

    def _row_chunks(self, inputs, num_items_in_batch) -> list[dict[str, Any]] | None:
        """`inputs` split by rows into passes of at most ``max_tokens_per_pass`` padded tokens (at least one
        row each), or None to run the batch whole: no limit, a batch within it, no batch-wide token count to
        divide by, or a set-up where a backward pass does more than add gradients (more than one process
        or GPU: each backward synchronises or averages them; DeepSpeed steps its optimizer in the last
        micro-batch's backward; LOMO optimizers update in it)."""
        budget = getattr(self.args, "max_tokens_per_pass", None)
        ids = inputs.get("input_ids")
        if (
            budget is None
            or ids is None
            or num_items_in_batch is None
            or self.args.world_size > 1
            or self.args.n_gpu > 1
            or self.is_deepspeed_enabled
            or self.args.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO)
        ):
            return None
        rows, length = ids.shape
        if rows < 2 or rows * length <= budget:
            return None
        passes = -(-rows // max(1, budget // length))  # ceil: the fewest passes within the budget
        per_pass = -(-rows // passes)  # rows spread evenly over them (2 + 2, not 3 + 1)
        starts = range(0, rows, per_pass)
        return [
            {
                key: value[start : start + per_pass]
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows
                else value
                for key, value in inputs.items()
            }
            for start in starts
        ]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A checkpointed forward recomputes layers and may drop a passed cache (GPT-2 does): run whole.
        share = self.args.share_prompt_prefix and not self.args.gradient_checkpointing
        with self.mixed_precision(model):
            loss, outputs = completion_loss(
                model,
                inputs,
                num_items_in_batch,
                share_prefix=share,
                label_smoothing=self.args.label_smoothing_factor,
            )
        return (loss, outputs) if return_outputs else loss

    def mixed_precision(self, model) -> contextlib.AbstractContextManager:
        """Autocast to the `bf16`/`fp16` dtype of the arguments, with PEFT's input casts turned off.

        PEFT keeps adapter weights in fp32 and casts each adapter's input to fp32 before its matmul; under
        autocast the matmul casts it back to bf16, so the result is the same, but every adapter keeps its own
        copy of its input for the backward pass, made by that round trip (q, k and v of one layer: three
        copies of the same activations; PEFT's 8-bit layers mean to skip the cast under autocast, but
        their check, ``torch.is_autocast_enabled()`` without a device, only sees CUDA autocast). With the
        casts off (`peft.helpers.disable_input_dtype_casting`) the adapters read the bf16 activations
        themselves: the same loss and gradients bit for bit, and fewer bytes kept for the backward pass
        (`tests/test_trainer.py`). Without mixed precision this is a no-op: PEFT's casts are then needed.

        Returns:
            A context manager.
        """
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        if dtype is None:
            return contextlib.nullcontext()
        from peft.helpers import disable_input_dtype_casting

        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.args.device.type, dtype=dtype))
        stack.enter_context(disable_input_dtype_casting(model))
        return stack

    def predict_labels(self, dataset: LabelDataset, decoding: str = "constrained") -> LabelScores:
        """Decode a label for every sample of `dataset`, sharing the work between processes.

        Args:
            dataset (`LabelDataset`): The samples (their prompts are used, not their labels).
            decoding (`str`, *optional*, defaults to `"constrained"`): ``"constrained"`` or ``"generate"``.

        Returns:
            `LabelScores` in dataset order, identical on every process.
        """
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        if decoding not in DECODINGS:
            raise ValueError(f"decoding: unknown value {decoding!r}; choose one of {DECODINGS}.")
        rank, world = self.args.process_index, self.args.world_size
        mine = list(range(rank, len(dataset), world))
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        bar = tqdm(
            total=len(mine),
            desc=f"Decoding labels ({decoding})",
            disable=not self.is_local_process_zero() or self.args.disable_tqdm,
            leave=False,
        )
        decode = score_labels if decoding == "constrained" else generate_labels
        with torch.no_grad(), self.autocast_smart_context_manager():
            part = decode(
                model,
                self.processing_class,
                self.task,
                [dataset.prompts[i] for i in mine],
                batch_size=self.args.per_device_eval_batch_size,
                on_batch=bar.update,
            )
        bar.close()
        model.train(was_training)
        probs = part.probs.tolist() if part.probs is not None else [None] * len(mine)
        texts = part.completions or [None] * len(mine)
        rows = (
            gather_object(list(zip(mine, part.labels, probs, texts, strict=False)))
            if world > 1
            else list(zip(mine, part.labels, probs, texts, strict=False))
        )
        by_index = {row[0]: row for row in rows}  # one row per sample, whatever the padding of the shards
        ordered = [by_index[i] for i in range(len(dataset))]
        return LabelScores(
            [row[1] for row in ordered],
            probs=torch.tensor([row[2] for row in ordered]) if decoding == "constrained" else None,
            completions=[row[3] for row in ordered] if decoding == "generate" else None,
        )

    def label_metrics(self, dataset: LabelDataset, metric_key_prefix: str = "eval") -> dict[str, Any]:
        """Label metrics of every decoding mode in `args.decodings` (see `LabelTrainingArguments`).

        The decoded labels stay available as `self.last_label_scores[decoding]`.
        """
        if not isinstance(dataset, LabelDataset):
            raise TypeError(
                f"Label metrics need a LabelDataset (examples + prompts), got {type(dataset).__name__}; "
                "build the "
                "eval set with LabelDataset(examples, tokenizer, task, max_length)."
            )
        # Imported here, not with the module: scikit-learn and `evaluate` (about 40 MB resident) are only
        # needed once a run evaluates, after the training steps' memory is given back.
        from trainer_ext.evaluation.metrics import classification_metrics, flat_metrics

        gold = [ex.label for ex in dataset.examples]
        metrics: dict[str, Any] = {}
        self.last_label_scores = {}
        for n, decoding in enumerate(self.args.decodings):
            self.last_label_scores[decoding] = self._with_decision_bias(
                self.predict_labels(dataset, decoding)
            )
            scores = classification_metrics(gold, self.last_label_scores[decoding].labels, self.task.labels)
            prefix = f"{metric_key_prefix}_" if n == 0 else f"{metric_key_prefix}_{decoding}_"
            metrics.update(flat_metrics(scores, prefix))
        return metrics

    def _with_decision_bias(self, scores: LabelScores) -> LabelScores:
        """Constrained scores with the task's decision offsets applied (`trainer_ext.inference.decision`)."""
        if scores.probs is None or not self.task.decision_bias:
            return scores
        probs = apply_decision_bias(scores.probs, self.task.labels, self.task.decision_bias)
        return LabelScores([self.task.labels[i] for i in probs.argmax(-1).tolist()], probs=probs)

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Loss and label metrics of an eval set (or of each set of a dict of them)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            results: dict[str, float] = {}
            for name, part in dataset.items():
                results.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return results
        # Callbacks (early stopping, ...) must see the label metrics: the Trainer's own `on_evaluate` call,
        # made before they exist, is held back and made here with them.
        handler = self.callback_handler
        handler.on_evaluate = lambda args, state, control, metrics=None, **kwargs: control
        try:
            metrics = super().evaluate(dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            del handler.on_evaluate  # back to the class's method
        extra = self.label_metrics(dataset, metric_key_prefix)
        self.log(extra)
        metrics.update(extra)
        self.control = handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

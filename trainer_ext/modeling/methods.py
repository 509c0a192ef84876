"""Training methods: which parameters of a causal LM are trained.

| method           | trained                                                                    |
|------------------|----------------------------------------------------------------------------|
| `norms`          | only the weights and biases of the normalisation layers (LayerNorm/RMSNorm) |
| `lora-attention` | LoRA adapters on the attention projections                                 |
| `lora-all`       | LoRA adapters on every linear layer of the blocks, and on the input embedding |
| `full`           | every parameter (needs an unquantized model)                               |
| `none`           | nothing: the frozen model, for zero-/few-shot use                           |

LoRA targets are found from the module tree, not from a table of names: the decoder blocks are the
longest `nn.ModuleList` of the model, the attention projections are the linear layers under a block's
child whose name contains ``attn`` or ``attention``. This covers GPT-J, GPT-2/ruGPT-3, GPT-NeoX,
Llama/SmolLM, OPT and most other decoder-only models.

With tied input/output embeddings (SmolLM2, GPT-2), `lora-all` adapts the input side only: the output
layer keeps sharing the frozen base weight with the embedding, so tying holds and nothing is counted or
updated twice. (PEFT's ``ensure_weight_tying`` would instead give the output layer a second `Parameter`
over the same storage: counted twice, with two optimizer states updating one tensor.) Merging such an
adapter into the shared weight would change the output layer too, so `trainer_ext.runs.directory.load_run`
(``merge_adapter=True``) gives the output layer its own copy of the weight before it merges. An untied
output layer (GPT-J, GPT-NeoX) gets its own adapter in `lora-all`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from trainer_ext.modeling.settings import LoraSettings
from trainer_ext.vocabulary import LORA_METHODS

logger = logging.getLogger(__name__)

_ATTENTION_MARKERS = ("attn", "attention")


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear8bitLt / Linear4bit subclass nn.Linear; GPT-2 uses transformers' Conv1D.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks of a causal LM: its longest `nn.ModuleList`.

    Args:
        model (`nn.Module`): A Transformers causal LM (possibly wrapped by PEFT).

    Returns:
        `tuple[str, nn.ModuleList]`: The qualified name of the list and the list.

    Raises:
        `ValueError`: When the model has no `nn.ModuleList`.
    """
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no list of decoder blocks; set lora_target_modules by hand."
        )
    return max(lists, key=lambda item: len(item[1]))


def _embedding_is_tied(model: nn.Module) -> bool:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or not hasattr(model, "get_input_embeddings"):
        return False
    return output.weight is model.get_input_embeddings().weight


def _qualified_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def lora_targets(model: nn.Module, scope: str) -> list[str]:
    """The LoRA target modules of a model, found from its module tree.

    Names inside the decoder blocks are given relative to a block (``"self_attn.q_proj"``), which PEFT
    matches as a suffix in every block; the embedding and the output layer get their qualified names.

    Args:
        model (`nn.Module`): A Transformers causal LM.
        scope (`str`): ``"attention"`` (the attention projections) or ``"all"`` (every linear layer of the
            blocks, the input embedding and, when not tied to it, the output layer).

    Returns:
        `list[str]`: Target names for `peft.LoraConfig.target_modules`, in model order.

    Example:

    ```python
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    >>> lora_targets(model, "attention")
    ['attn.c_attn', 'attn.c_proj']

    ```
    """
    if scope not in ("attention", "all"):
        raise ValueError(f"lora_targets: scope must be 'attention' or 'all', got {scope!r}.")
    _, blocks = decoder_blocks(model)
    targets: list[str] = []
    for name, module in blocks[0].named_modules():
        if not name or not _is_linear(module):
            continue
        in_attention = any(marker in name.split(".")[0].lower() for marker in _ATTENTION_MARKERS)
        if (scope == "all" or in_attention) and name not in targets:
            targets.append(name)
    if scope == "attention" and not targets:
        raise ValueError(
            f"{type(model).__name__}: no attention projections found in the decoder blocks; "
            "set lora_target_modules by hand."
        )
    if scope == "all":
        targets.insert(0, _qualified_name(model, model.get_input_embeddings()))
        output = model.get_output_embeddings()
        if output is not None and not _embedding_is_tied(model) and _is_linear(output):
            targets.append(_qualified_name(model, output))
    return targets


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Count trainable and total parameters; tied (shared) tensors are counted once.

    For a bitsandbytes 4-bit layer, whose weight is stored packed two values per byte, the count is the
    number of weights it stands for.

    Args:
        model (`nn.Module`): Any model.

    Returns:
        `tuple[int, int]`: ``(trainable, total)``.
    """
    trainable = total = 0
    for param in model.parameters():  # parameters() yields a shared tensor once
        count = param.numel()
        if type(param).__name__ == "Params4bit":
            count *= 2
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def _train_norms(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    for module in model.modules():
        if _is_norm(module):
            for param in module.parameters(recurse=False):
                if param.ndim == 1:
                    param.requires_grad_(True)
    return model


def _is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False))


def _apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    scope = "all" if settings.method == "lora-all" else "attention"
    targets = list(settings.lora_target_modules or lora_targets(model, scope))
    fan_in_fan_out = any(type(module).__name__ == "Conv1D" for module in model.modules())
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    tied_embedding = (
        _embedding_is_tied(model) and _qualified_name(model, model.get_input_embeddings()) in targets
    )
    with handled_peft_warnings():
        peft_model = get_peft_model(model, config)
    if tied_embedding:
        logger.info(
            "Tied embeddings: the embedding adapter acts on the input side only; the output layer keeps the "
            "shared frozen weights. To merge it, load the run with merge_adapter=True, which gives the "
            "output layer its own copy of the weight first (PEFT's merge_and_unload alone would change it)."
        )
    return peft_model


#: The starts of PEFT's warnings about what this module already handles (`warnings.filterwarnings` patterns).
HANDLED_PEFT_WARNINGS = (
    # GPT-2 mixes Conv1D blocks with an nn.Linear output layer: PEFT resets fan_in_fan_out for the latter.
    "fan_in_fan_out is set to True",
    # An adapter on a tied embedding: see the module docstring (load_run unties before it merges).
    "Model has `tie_word_embeddings=True`",
    # transformers renamed a method that PEFT reads when it wraps a model; no setting of a user changes it.
    "`is_gradient_checkpointing` is deprecated",
)
_WARNING_FILTERS_LOCK = threading.Lock()


@contextlib.contextmanager
def handled_peft_warnings() -> Iterator[None]:
    """Silence `HANDLED_PEFT_WARNINGS` while PEFT adds or loads adapters; other warnings pass.

    `warnings.catch_warnings` swaps the process's filters for the duration: two of these blocks never
    overlap (a lock), but a warning of another thread that matches one of the patterns is also silenced
    while an adapter loads, and another thread's own `catch_warnings` around the same moment can restore
    the wrong filters. Load models from one thread (see `Classifier`).
    """
    with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
        for start in HANDLED_PEFT_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(start))
        yield


def _prepare_quantized(model: nn.Module, method: str, gradient_checkpointing: bool) -> None:
    """Freeze a quantized model's base weights before adapters are added.

    With float16 compute this is PEFT's `prepare_model_for_kbit_training`, which also upcasts the
    non-quantized weights (norms, embeddings) to fp32 so float16 activations do not overflow. bf16 has
    fp32's exponent range, so with bf16 the upcast buys no stability and costs a lot: every activation
    turns fp32 and every matmul runs in fp32 (measured 2-8x slower per step on an AVX-512 BF16 CPU, see
    ``benchmarks/loading.py``). The `norms` method keeps the upcast: the norms it trains need fp32
    weights (bf16 rounds most Adam steps away), and an fp32 norm feeding a bf16 layer only works when
    the rest is fp32 too.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype == torch.float16 or method == "norms":
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        return
    model.requires_grad_(False)
    if gradient_checkpointing:
        # Checkpointed blocks need an input that requires grad, or no gradient reaches the adapters.
        model.enable_input_require_grads()


def _enable_checkpointing(model: nn.Module) -> None:
    # transformers 5 renamed gradient checkpointing to activation checkpointing; older 5.x lack the new name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_method(model: nn.Module, settings: LoraSettings, gradient_checkpointing: bool = False) -> nn.Module:
    """Make exactly the parameters of a training method trainable (adding LoRA adapters where asked).

    A model loaded in 8-bit or 4-bit first gets its base weights frozen (see `_prepare_quantized`).

    Args:
        model (`PreTrainedModel`): A Transformers causal LM. PEFT records ``model.name_or_path`` as the base
            model of the adapter.
        settings (`LoraSettings`): The method and LoRA shape.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): Recompute activations in the
            backward pass: less memory, about a third more compute.

    Returns:
        `nn.Module`: The model (a `PeftModel` for the LoRA methods).

    Raises:
        `ValueError`: For `full` on a quantized model (its int8/4-bit weights cannot be trained).
    """
    quantized = _is_quantized(model)
    if settings.method == "full" and quantized:
        raise ValueError(
            "method 'full' trains every weight, which a model loaded in 8-bit or 4-bit cannot do: "
            "use quantization 'none' with 'full', or a LoRA method with quantization."
        )
    if quantized and settings.method != "none":
        _prepare_quantized(model, settings.method, gradient_checkpointing)
    if gradient_checkpointing and settings.method != "none":
        _enable_checkpointing(model)
    if settings.method in LORA_METHODS:
        model = _apply_lora(model, settings)
    elif settings.method == "norms":
        model = _train_norms(model)
    elif settings.method == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
    if settings.method == "none":  # a frozen model, e.g. the base of a run loaded for prediction
        return model
    trainable, total = count_parameters(model)
    logger.info(
        "Method %s: %s trainable parameters of %s (%.3f%%).",
        settings.method,
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )
    return model

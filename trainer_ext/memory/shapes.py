"""The shapes of a decoder-only causal LM, read from its config: what the memory estimator counts.

`model_shape(config)` turns a Transformers config (GPT-J, GPT-2/ruGPT-3, GPT-NeoX, Llama/SmolLM2, OPT) into
a `ModelShape`: the linear layers of one decoder block, the parameters outside the blocks, and the few
facts about the forward pass that decide how much autograd keeps for the backward pass (norm kind,
MLP activation, attention implementation, dropouts). Everything is arithmetic on the config: no weights,
no model is built.

>>> from transformers import GPT2Config
>>> shape = model_shape(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32))
>>> shape.num_params
108544
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Tensors the MLP activation function keeps for the backward pass, in units of its input (B, T, I).
# Measured with `torch.autograd.graph.saved_tensors_hooks`: the Python GELU approximations keep their
# intermediates; the fused kernels keep their input only. ReLU keeps its output, which is also the input
# of the down projection (counted there).
ACTIVATION_SAVED: dict[str, int] = {
    "gelu_new": 4,
    "gelu_fast": 7,
    "gelu": 1,
    "gelu_pytorch_tanh": 1,
    "gelu_python": 1,
    "silu": 1,
    "swish": 1,
    "quick_gelu": 2,
    "relu": 0,
}


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of a decoder block.

    Args:
        name (`str`): Its name inside the block (``"attn.q_proj"``).
        in_features (`int`): Input width.
        out_features (`int`): Output width.
        bias (`bool`): Whether it has a bias.
        attention (`bool`): Whether it belongs to the attention module (a `lora-attention` target).
        group (`str`): Name of the tensor it reads; layers reading the same tensor (q, k, v) share a group.
    """

    name: str
    in_features: int
    out_features: int
    bias: bool
    attention: bool
    group: str

    @property
    def num_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a causal LM depends on, from its config.

    Args:
        model_type (`str`): The config's ``model_type``.
        num_layers (`int`): Number of decoder blocks.
        hidden_size (`int`): Width of the residual stream.
        vocab_size (`int`): Vocabulary size (width of the logits).
        num_heads (`int`): Attention heads.
        intermediate_size (`int`): Width of the MLP.
        linears (`tuple[LinearShape, ...]`): The linear layers of one block.
        block_norm_params (`int`): Norm parameters of one block.
        norms_per_block (`int`): Norm layers per block.
        norm_inputs (`int`): Distinct tensors normalised per block (GPT-NeoX's parallel block normalises
            one tensor twice).
        norm (`str`): ``"layernorm"`` or ``"rmsnorm"`` (Llama's, computed in fp32).
        embedding_params (`int`): Token embedding parameters.
        position_params (`int`): Learned position embedding parameters (GPT-2, OPT).
        outer_linears (`tuple[LinearShape, ...]`): Linear layers outside the blocks, but the output layer.
        final_norm_params (`int`): Parameters of the final norm.
        output_params (`int`): Parameters of the output layer not shared with the token embedding.
        tied (`bool`): Whether the output layer's weight is the token embedding.
        activation (`str`): MLP activation function (a key of `ACTIVATION_SAVED`).
        gated_mlp (`bool`): SwiGLU MLP (gate and up projections).
        eager_attention (`bool`): Attention probabilities are kept for the backward pass (GPT-J's attention).
        attention_saved_width (`int`): Per token, the width of the query, key and value that attention keeps.
        block_dropouts (`int`): Dropouts with p > 0 on the residual stream of one block.
        embedding_dropout (`bool`): A dropout with p > 0 after the embeddings.
    """

    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    intermediate_size: int
    linears: tuple[LinearShape, ...]
    block_norm_params: int
    norms_per_block: int
    norm_inputs: int
    norm: str
    embedding_params: int
    position_params: int
    outer_linears: tuple[LinearShape, ...]
    final_norm_params: int
    output_params: int
    tied: bool
    activation: str
    gated_mlp: bool
    eager_attention: bool
    attention_saved_width: int
    block_dropouts: int
    embedding_dropout: bool

    @property
    def block_params(self) -> int:
        """Parameters of one decoder block."""
        return sum(linear.num_params for linear in self.linears) + self.block_norm_params

    @property
    def num_params(self) -> int:
        """All parameters, a tied output layer counted once."""
        outer = sum(linear.num_params for linear in self.outer_linears)
        return (
            self.num_layers * self.block_params
            + self.embedding_params
            + self.position_params
            + outer
            + self.final_norm_params
            + self.output_params
        )

    def group_width(self, group: str) -> int:
        """Width of the tensor a group of linear layers reads."""
        return next(linear.in_features for linear in self.linears if linear.group == group)


def _linear(name: str, n_in: int, n_out: int, bias: bool, group: str) -> LinearShape:
    return LinearShape(name, n_in, n_out, bias, name.split(".")[0].lower().find("att") >= 0, group)


def _dropout(p: Any) -> bool:
    return bool(p) and float(p) > 0.0


def _gptj(c) -> dict:
    h, inner = c.n_embd, c.n_inner or 4 * c.n_embd
    linears = (
        *(_linear(f"attn.{n}", h, h, False, "ln_1") for n in ("q_proj", "k_proj", "v_proj")),
        _linear("attn.out_proj", h, h, False, "attn_out"),
        _linear("mlp.fc_in", h, inner, True, "ln_1"),
        _linear("mlp.fc_out", inner, h, True, "mlp_mid"),
    )
    return dict(
        num_layers=c.n_layer,
        hidden_size=h,
        num_heads=c.n_head,
        intermediate_size=inner,
        linears=linears,
        block_norm_params=2 * h,
        norms_per_block=1,
        norm_inputs=1,
        norm="layernorm",
        position_params=0,
        outer_linears=(),
        final_norm_params=2 * h,
        # GPT-J's output layer has a bias, which tying leaves untied.
        output_params=(1 if c.tie_word_embeddings else h + 1) * c.vocab_size,
        tied=c.tie_word_embeddings,
        activation=c.activation_function,
        gated_mlp=False,
        eager_attention=True,
        attention_saved_width=0,
        block_dropouts=_dropout(c.resid_pdrop) * 2,
        embedding_dropout=_dropout(c.embd_pdrop),
    )


def _gpt2(c) -> dict:
    h, inner = c.n_embd, c.n_inner or 4 * c.n_embd
    linears = (
        _linear("attn.c_attn", h, 3 * h, True, "ln_1"),
        _linear("attn.c_proj", h, h, True, "attn_out"),
        _linear("mlp.c_fc", h, inner, True, "ln_2"),
        _linear("mlp.c_proj", inner, h, True, "mlp_mid"),
    )
    return dict(
        num_layers=c.n_layer,
        hidden_size=h,
        num_heads=c.n_head,
        intermediate_size=inner,
        linears=linears,
        block_norm_params=4 * h,
        norms_per_block=2,
        norm_inputs=2,
        norm="layernorm",
        position_params=c.n_positions * h,
        outer_linears=(),
        final_norm_params=2 * h,
        output_params=0 if c.tie_word_embeddings else h * c.vocab_size,
        tied=c.tie_word_embeddings,
        activation=c.activation_function,
        gated_mlp=False,
        eager_attention=False,
        # q, k and v are views of the c_attn output: attention keeps all of it.
        attention_saved_width=3 * h,
        block_dropouts=_dropout(c.resid_pdrop) * 2,
        embedding_dropout=_dropout(c.embd_pdrop),
    )


def _gpt_neox(c) -> dict:
    h, inner, bias = c.hidden_size, c.intermediate_size, getattr(c, "attention_bias", True)
    parallel = getattr(c, "use_parallel_residual", True)
    linears = (
        _linear("attention.query_key_value", h, 3 * h, bias, "input_layernorm"),
        _linear("attention.dense", h, h, bias, "attn_out"),
        _linear("mlp.dense_h_to_4h", h, inner, True, "post_attention_layernorm"),
        _linear("mlp.dense_4h_to_h", inner, h, True, "mlp_mid"),
    )
    return dict(
        num_layers=c.num_hidden_layers,
        hidden_size=h,
        num_heads=c.num_attention_heads,
        intermediate_size=inner,
        linears=linears,
        block_norm_params=4 * h,
        norms_per_block=2,
        norm_inputs=1 if parallel else 2,
        norm="layernorm",
        position_params=0,
        outer_linears=(),
        final_norm_params=2 * h,
        output_params=0 if c.tie_word_embeddings else h * c.vocab_size,
        tied=c.tie_word_embeddings,
        activation=c.hidden_act,
        gated_mlp=False,
        eager_attention=False,
        # Rotary makes a new query and key; attention keeps them and a contiguous value (not the qkv output).
        attention_saved_width=3 * h,
        block_dropouts=_dropout(c.hidden_dropout) * 2,
        embedding_dropout=False,
    )


def _llama(c) -> dict:
    h, inner = c.hidden_size, c.intermediate_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q_dim, kv_dim = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    attn_bias, mlp_bias = bool(getattr(c, "attention_bias", False)), bool(getattr(c, "mlp_bias", False))
    linears = (
        _linear("self_attn.q_proj", h, q_dim, attn_bias, "input_layernorm"),
        _linear("self_attn.k_proj", h, kv_dim, attn_bias, "input_layernorm"),
        _linear("self_attn.v_proj", h, kv_dim, attn_bias, "input_layernorm"),
        _linear("self_attn.o_proj", q_dim, h, attn_bias, "attn_out"),
        _linear("mlp.gate_proj", h, inner, mlp_bias, "post_attention_layernorm"),
        _linear("mlp.up_proj", h, inner, mlp_bias, "post_attention_layernorm"),
        _linear("mlp.down_proj", inner, h, mlp_bias, "mlp_mid"),
    )
    return dict(
        num_layers=c.num_hidden_layers,
        hidden_size=h,
        num_heads=c.num_attention_heads,
        intermediate_size=inner,
        linears=linears,
        block_norm_params=2 * h,
        norms_per_block=2,
        norm_inputs=2,
        norm="rmsnorm",
        position_params=0,
        outer_linears=(),
        final_norm_params=h,
        output_params=0 if c.tie_word_embeddings else h * c.vocab_size,
        tied=c.tie_word_embeddings,
        activation=c.hidden_act,
        gated_mlp=True,
        eager_attention=False,
        # With a padding mask, SDPA gets keys and values repeated to every query head (`repeat_kv`).
        attention_saved_width=3 * q_dim,
        block_dropouts=0,
        embedding_dropout=False,
    )


def _opt(c) -> dict:
    h, inner, bias = c.hidden_size, c.ffn_dim, getattr(c, "enable_bias", True)
    proj = c.word_embed_proj_dim or h
    norm = 2 * h if getattr(c, "layer_norm_elementwise_affine", True) else 0
    linears = (
        *(
            _linear(f"self_attn.{n}", h, h, bias, "self_attn_layer_norm")
            for n in ("q_proj", "k_proj", "v_proj")
        ),
        _linear("self_attn.out_proj", h, h, bias, "attn_out"),
        _linear("fc1", h, inner, bias, "final_layer_norm"),
        _linear("fc2", inner, h, bias, "mlp_mid"),
    )
    outer = (
        ()
        if proj == h
        else (_linear("project_in", proj, h, False, ""), _linear("project_out", h, proj, False, ""))
    )
    has_final = c.do_layer_norm_before and not getattr(c, "_remove_final_layer_norm", False)
    return dict(
        num_layers=c.num_hidden_layers,
        hidden_size=h,
        num_heads=c.num_attention_heads,
        intermediate_size=inner,
        linears=linears,
        block_norm_params=2 * norm,
        norms_per_block=2,
        norm_inputs=2,
        norm="layernorm",
        # OPT's learned positions have 2 extra rows (an offset kept from fairseq).
        position_params=(c.max_position_embeddings + 2) * h,
        outer_linears=outer,
        final_norm_params=norm if has_final else 0,
        output_params=0 if c.tie_word_embeddings else proj * c.vocab_size,
        tied=c.tie_word_embeddings,
        activation=c.activation_function,
        gated_mlp=False,
        eager_attention=False,
        attention_saved_width=3 * h,
        block_dropouts=_dropout(c.dropout) * 2,
        embedding_dropout=False,
    )


_BUILDERS = {"gptj": _gptj, "gpt2": _gpt2, "gpt_neox": _gpt_neox, "llama": _llama, "opt": _opt}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_BUILDERS)


def model_shape(config: Any) -> ModelShape:
    """Read the memory-relevant shapes of a causal LM from its Transformers config.

    Args:
        config (`PretrainedConfig`): A config of a supported ``model_type`` (`SUPPORTED_MODEL_TYPES`).

    Returns:
        `ModelShape`: Its shapes.

    Raises:
        `ValueError`: For an unsupported ``model_type``, or an MLP activation the estimator does not know.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in _BUILDERS:
        raise ValueError(
            f"model_type {model_type!r} is not supported by the memory estimator; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    fields = _BUILDERS[model_type](config)
    if fields["activation"] not in ACTIVATION_SAVED:
        raise ValueError(
            f"{model_type}: MLP activation {fields['activation']!r} is not known to the memory estimator; "
            f"known: {', '.join(ACTIVATION_SAVED)}."
        )
    embedding_dim = fields["hidden_size"]
    if model_type == "opt":  # OPT-350m embeds in a narrower width and projects in and out
        embedding_dim = config.word_embed_proj_dim or embedding_dim
    return ModelShape(
        model_type=model_type,
        vocab_size=config.vocab_size,
        embedding_params=config.vocab_size * embedding_dim,
        **fields,
    )

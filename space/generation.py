"""Free continuation of a prompt with the three decoding styles of the Generate tab.

- greedy: the most likely token at every step; deterministic, for exact, short answers;
- beam search: keeps the `num_beams` most likely continuations and returns the best whole one;
- sampling: draws each token from the distribution sharpened by `temperature` and cut to the
  smallest set of tokens whose probability reaches `top_p` (nucleus sampling); for creative text.
  A seed makes a sampled answer reproducible.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import torch

from space.errors import InputError

DECODING_STYLES = ("greedy", "beam search", "sampling")
MAX_PROMPT_CHARS = 2000
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 200
MAX_BEAMS = 8


@dataclass(frozen=True)
class DecodingRequest:
    """One generation request, validated.

    Args:
        style (`str`): `"greedy"`, `"beam search"` or `"sampling"`.
        max_new_tokens (`int`): Tokens to generate, 1 to `MAX_NEW_TOKENS`.
        num_beams (`int`): Beams of beam search, 2 to `MAX_BEAMS` (ignored by the other styles).
        temperature (`float`): Sampling temperature, > 0 (ignored unless sampling).
        top_p (`float`): Nucleus mass, in (0, 1] (ignored unless sampling).
        seed (`int`): Seed of the sampler (ignored unless sampling).
    """

    style: str = "greedy"
    max_new_tokens: int = 40
    num_beams: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in DECODING_STYLES:
            raise InputError(
                f"Unknown decoding style {html.escape(repr(self.style), quote=False)}; "
                f"use one of {', '.join(DECODING_STYLES)}."
            )
        _check_range("Max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if self.style == "beam search":
            _check_range("Beams", self.num_beams, 2, MAX_BEAMS)
        if self.style == "sampling":
            if not 0.05 <= self.temperature <= 2.0:
                raise InputError(f"Temperature must be between 0.05 and 2, got {self.temperature}.")
            if not 0.05 <= self.top_p <= 1.0:
                raise InputError(f"Top-p must be between 0.05 and 1, got {self.top_p}.")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `model.generate` for this request."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(self.max_new_tokens),
            "num_beams": 1,
            "do_sample": False,
        }
        if self.style == "beam search":
            kwargs.update(num_beams=int(self.num_beams), early_stopping=True)
        elif self.style == "sampling":
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        return kwargs


def _check_range(name: str, value: float, low: int, high: int) -> None:
    if value != int(value) or not low <= value <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value}.")


def check_prompt(prompt: str | None) -> str:
    """The prompt, or a `InputError` saying why it cannot be used (empty or longer than the cap)."""
    prompt = prompt or ""
    if not prompt.strip():
        raise InputError("The prompt is empty: write the beginning of a text for the model to continue.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"The prompt has {len(prompt)} characters; this demo continues prompts of up to "
            f"{MAX_PROMPT_CHARS}. Shorten it and try again."
        )
    return prompt


def continue_prompt(model: Any, tokenizer: Any, prompt: str, request: DecodingRequest) -> str:
    """Generate a continuation of `prompt` (the new text only, special tokens removed).

    Args:
        model (`PreTrainedModel`): A causal language model.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        prompt (`str`): The text to continue (checked with `check_prompt`).
        request (`DecodingRequest`): Decoding style and limits.

    Returns:
        `str`: The generated text after the prompt.
    """
    encoded = tokenizer(check_prompt(prompt), return_tensors="pt")
    n_prompt = encoded["input_ids"].shape[1]
    if n_prompt > MAX_PROMPT_TOKENS:
        raise InputError(
            f"The prompt is {n_prompt} tokens long; this demo continues prompts of up to {MAX_PROMPT_TOKENS} "
            "tokens. Shorten it and try again."
        )
    device = next(model.parameters()).device
    encoded = {key: value.to(device) for key, value in encoded.items()}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if request.style == "sampling":
        torch.manual_seed(int(request.seed))
    with torch.inference_mode():
        output = model.generate(**encoded, pad_token_id=pad_id, **request.generate_kwargs())  # (1, T + new)
    return tokenizer.decode(output[0, n_prompt:], skip_special_tokens=True)

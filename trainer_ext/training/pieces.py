"""How the pieces of a prompt are tokenised: template text, the message, the completion.

Fast tokenizers encode the prompt as one string, split by character offsets (so a word marker such as
SentencePiece's "▁", which `legacy` Llama-2 / Mistral normalizers prepend to every string, appears only
where the running text has it), and the completion after the answer cue, keeping the tokens that start
in it. Pieces are tokenised apart instead where a token straddles that boundary (or, when both template
and message hold special-token text, a message bound), and with slow tokenizers (no offsets).

Spaces that end the prefix (`"Message: "`) belong to the message (`" hello"`, not `" "` + `"hello"`). A
message that contains the text of a special token (`"<|endoftext|>"`) gets it as plain text; templates
and verbalizers may use special tokens on purpose (chat markers) and keep them.
"""

from __future__ import annotations

from typing import Any

from trainer_ext.tasks import LabelTask
from trainer_ext.vocabulary import TRUNCATION_SIDES


class EncodingError(ValueError):
    """A sample that cannot be encoded within `max_length` (or with this tokenizer); names the sample."""


def _raw_ids(tokenizer: Any, text: str, split_special_tokens: bool = False) -> list[int]:
    if not text:
        return []
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens)
    return list(encoded["input_ids"])


def _offset_ids(tokenizer: Any, text: str, split: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (no special tokens added) and the `(start, end)` character span of each."""
    if not text:
        return [], []
    encoded = tokenizer(
        text, add_special_tokens=False, split_special_tokens=split, return_offsets_mapping=True
    )
    return list(encoded["input_ids"]), [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


class PieceEncoder:
    """Encodes prompt pieces and completions for one tokenizer (special tokens looked up once)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise EncodingError(
                f"The tokenizer {type(tokenizer).__name__} has no EOS token, so completions cannot end; "
                "set `tokenizer.eos_token` (loading.load_tokenizer does this for known models)."
            )
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_ids = self._special_prefix()
        # Tokenizers that mark a word start on every encoded string (SentencePiece "▁") would put a
        # space between pieces. For them, pieces after the first are encoded after the EOS token,
        # which is then removed: a special token ends the previous split, so no marker is added.
        self.anchor = str(tokenizer.eos_token)
        self.needs_anchor = self._anchored("a") != _raw_ids(tokenizer, "a")

    def _anchored(self, text: str) -> list[int]:
        ids = _raw_ids(self.tokenizer, self.anchor + text)
        return ids[1:] if ids[:1] == [self.eos_id] else _raw_ids(self.tokenizer, text)

    def _special_prefix(self) -> list[int]:
        plain = _raw_ids(self.tokenizer, "a")
        full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    def piece(self, text: str, first: bool) -> list[int]:
        """Ids of template text; `first` when it starts the sequence (encoded as is)."""
        if first or not self.needs_anchor:
            return _raw_ids(self.tokenizer, text)
        return self._anchored(text) if text else []

    def message(self, text: str, first: bool) -> list[int]:
        """Ids of user text: special-token text stays plain text where pieces encode independently."""
        if first or not self.needs_anchor:
            return _raw_ids(self.tokenizer, text, split_special_tokens=True)
        return self._anchored(text) if text else []

    def completion(self, task: LabelTask, label: str) -> list[int]:
        return self.piece(task.completion(label), first=False) + [self.eos_id]

    def parts(self, task: LabelTask, text: str) -> tuple[list[int], list[int], list[int]]:
        """Ids of the prompt before the message, of the message, and after it (pieces tokenised apart)."""
        prefix, message, suffix = task.prompt_parts(text)
        core = prefix.rstrip(" ")
        prefix_ids = self.piece(core, first=True)
        message_ids = self.message(prefix[len(core) :] + message, first=not prefix_ids)
        return prefix_ids, message_ids, self.piece(suffix, first=False)

    def prompt(
        self,
        task: LabelTask,
        text: str,
        reserve: int,
        max_length: int,
        source: str | None,
        truncation_side: str = "right",
    ) -> tuple[list[int], bool]:
        """Prompt ids leaving `reserve` tokens for the completion; also whether the message was cut."""
        head, message_ids, tail = self.parts(task, text)
        fixed = len(self.bos_ids) + len(head) + len(tail) + reserve
        budget = max_length - fixed
        if budget < (1 if message_ids else 0):
            raise EncodingError(
                f"Sample {describe_sample(source, text)}: the prompt without the message plus the completion "
                f"take {fixed} tokens, leaving no room for the message within max_length={max_length}; raise "
                "max_length or shorten the template, the labels (an instruction prompt names every label), "
                "their verbalizers or the k-shot examples."
            )
        truncated = len(message_ids) > budget
        return self.bos_ids + head + cut_message(message_ids, budget, truncation_side) + tail, truncated


class OffsetEncoder(PieceEncoder):
    """Encodes with a fast tokenizer: whole strings, split by the character offsets of their tokens."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        decoder = getattr(tokenizer, "added_tokens_decoder", {})
        self.specials = tuple(token.content for token in decoder.values() if token.special)

    def completion(self, task: LabelTask, label: str) -> list[int]:
        """Tokens that start in the completion when it follows the answer cue, + EOS."""
        context = task.prompt_parts("")[2] or "\n"
        ids, offsets = _offset_ids(self.tokenizer, context + task.completion(label))
        at = len(context)
        if any(start < at < end for start, end in offsets):
            return super().completion(task, label)
        return [token for token, (start, _) in zip(ids, offsets, strict=True) if start >= at] + [self.eos_id]

    def parts(self, task: LabelTask, text: str) -> tuple[list[int], list[int], list[int]]:
        """The ids of the whole prompt, split around the tokens that lie inside the message.

        A token that straddles a message boundary stays with the template part it overlaps, so the three
        parts joined are the ids of the prompt, and truncation cuts only message tokens. Special-token
        text is plain text in the message; when the template holds special tokens too, the message ids
        come from a second reading of the prompt with them as plain text.
        """
        prefix, message, suffix = task.prompt_parts(text)
        start, end = len(prefix.rstrip(" ")), len(prefix) + len(message)
        full = prefix + message + suffix
        marked = self._has_special(prefix[:start]) or self._has_special(suffix)
        head, inside, tail, clean = self._split(full, start, end, plain=not marked)
        if not (marked and self._has_special(full[start:end])):
            return head, inside, tail
        _, inside, _, plain_clean = self._split(full, start, end, plain=True)
        return (head, inside, tail) if clean and plain_clean else super().parts(task, text)

    def _has_special(self, text: str) -> bool:
        return any(token in text for token in self.specials)

    def _split(
        self, text: str, start: int, end: int, plain: bool
    ) -> tuple[list[int], list[int], list[int], bool]:
        """Ids of `text` before, inside and after `[start, end)`; also whether no token straddles a bound."""
        ids, offsets = _offset_ids(self.tokenizer, text, split=plain)
        n_head = sum(1 for first, _ in offsets if first < start)
        n_tail = min(sum(1 for _, last in offsets if last > end), len(ids) - n_head)
        clean = not any(first < bound < last for first, last in offsets for bound in (start, end))
        return ids[:n_head], ids[n_head : len(ids) - n_tail], ids[len(ids) - n_tail :], clean


def piece_encoder(tokenizer: Any) -> PieceEncoder:
    return OffsetEncoder(tokenizer) if getattr(tokenizer, "is_fast", False) else PieceEncoder(tokenizer)


def cut_message(ids: list[int], budget: int, side: str = "right") -> list[int]:
    """Shorten message ids to `budget`: keep the start (`"right"` cuts the end), the end (`"left"`), or
    both ends (`"both"`, the middle is cut; the start gets the extra token of an odd budget).

    >>> cut_message([1, 2, 3, 4, 5], 3, "right"), cut_message([1, 2, 3, 4, 5], 3, "left")
    ([1, 2, 3], [3, 4, 5])
    >>> cut_message([1, 2, 3, 4, 5], 3, "both")
    [1, 2, 5]
    """
    if len(ids) <= budget:
        return ids
    if side == "right":
        return ids[:budget]
    if side == "left":
        return ids[len(ids) - budget :]
    if side == "both":
        head = (budget + 1) // 2
        return ids[:head] + ids[len(ids) - (budget - head) :]
    raise EncodingError(
        f"truncation_side: unknown value {side!r}; choose one of {', '.join(TRUNCATION_SIDES)}."
    )


def describe_sample(source: str | None, text: str) -> str:
    return source if source else repr(text[:60] + ("..." if len(text) > 60 else ""))

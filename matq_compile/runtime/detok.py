"""Streaming detokenization that prints only text that can no longer change.

A byte-level BPE splits a multi-byte character (CJK, emoji) across tokens; decoding a prefix that ends inside such a
character gives U+FFFD for the incomplete bytes, which the next token would turn into the real character. Printing
as we go must therefore hold back a tail that ends in U+FFFD until it completes (or the stream ends). Decoding works
on a sliding window (the prefix/read offsets of Hugging Face's TextStreamer and vLLM), so each token costs O(1)
decodes whatever the length, and decoders that treat the first token specially (a leading-space strip) see context.
"""
from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class StreamDecoder:
    """push(token) -> newly final text (possibly ""); flush() -> whatever was held back, at the end."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: a few tokens of context before the text already printed
        self.read = 0  # tokens up to here are printed

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def _advance(self, final: bool) -> str:
        printed = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(printed) or (text.endswith(REPLACEMENT) and not final):
            return ""  # nothing new, or an incomplete character at the end: wait for its remaining bytes
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(printed):]

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        return self._advance(final=False)

    def flush(self) -> str:
        """The held-back tail (a character the stream never completed prints as U+FFFD)."""
        return self._advance(final=True)

"""Test helpers: a real byte-level tokenizer (256 tokens, one per byte) for the tiny random Llama."""
from __future__ import annotations

from pathlib import Path


def save_byte_tokenizer(path: Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json of a byte-level BPE with no merges (token id = byte order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda c: _byte_of(c))
    vocab = {c: i for i, c in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=byte_chars[1], eos_token=byte_chars[2])
    fast.save_pretrained(path)
    return path


def _byte_of(char: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    if ord(char) in printable:
        return ord(char)
    others = [b for b in range(256) if b not in printable]
    return others[ord(char) - 256]


def tiny_model_with_tokenizer(model_dir: Path, out: Path) -> Path:
    """A copy of a tokenizer-free tiny model directory (conftest's tiny_llama_dir) plus the byte tokenizer."""
    import shutil

    shutil.copytree(model_dir, out)
    return save_byte_tokenizer(out)


"""Streaming detokenization: text is printed only once it can no longer change, so characters that a byte-level
BPE splits over several tokens never show up as U+FFFD, in the library and in `matq run`'s output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from matq_compile.runtime.detok import StreamDecoder

TEXT = "日本の首都は東京です。うくさとおよい。🙂 ok"  # 3- and 4-byte characters; one token a byte


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_tok_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_llama_tok_dir / "tokenizer.json"))


def stream(tokenizer, ids: list[int]) -> list[str]:
    d = StreamDecoder(tokenizer)
    return [d.push(i) for i in ids] + [d.flush()]


def test_multi_token_characters_print_whole(tokenizer):
    ids = tokenizer.encode(TEXT).ids
    assert len(ids) == len(TEXT.encode("utf-8"))  # really one token per byte: characters span 3-4 tokens
    assert "\ufffd" in tokenizer.decode(ids[:1])  # what printing the decoded prefix used to show
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == TEXT and not any("\ufffd" in p for p in pieces)
    assert pieces[:3] == ["", "", "日"]  # held back until the character's last byte, then printed at once


def test_a_character_left_incomplete_is_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("ab東").ids[:-1]  # the stream stops inside 東
    pieces = stream(tokenizer, ids)
    assert pieces[:-1] == ["a", "b", "", ""] and pieces[-1] == "\ufffd"  # two of its three bytes
    assert "".join(pieces) == tokenizer.decode(ids)


def test_invalid_bytes_are_printed_once_they_cannot_change(tokenizer):
    ids = [0xFF, ord("a"), 0xE6, ord("b")]  # never valid UTF-8: printed with the next character
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == "\ufffda\ufffdb"
    assert pieces[1] == "\ufffda"


class FakeModel:
    """Generates fixed ids (what the issue saw: a Japanese answer split into byte tokens)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def generate(self, ids, max_new_tokens, on_token=None, stop_at_eos=True):
        from matq_compile.runtime import Generation

        for t in self.ids[:max_new_tokens]:
            on_token(t)
        return Generation(self.ids[:max_new_tokens], len(ids), 1.0, 1.0)


def test_matq_run_streams_no_replacement_characters(tiny_llama_tok_dir, tokenizer, tmp_path, monkeypatch, capsys):
    from matq_compile import runtime
    from matq_compile.cli import main

    answer = "うくさとおよい。"
    ids = tokenizer.encode(answer).ids
    monkeypatch.setattr(runtime, "load", lambda build, device="cpu": FakeModel(ids))
    shutil.copyfile(tiny_llama_tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    rc = main(["run", str(tmp_path), "--prompt", "日本の首都は東京です。中国の首都は",
               "--max-new-tokens", str(len(ids)), "--ignore-eos", "--json", str(tmp_path / "gen.json")])
    assert rc == 0
    assert capsys.readouterr().out == answer + "\n"
    assert json.loads(Path(tmp_path / "gen.json").read_text())["tokens"] == ids

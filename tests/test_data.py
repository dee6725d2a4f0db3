"""Windows, seeds, calibration sources and the shared data files."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from matq_compile import data
from matq_compile.io_utils import sha256_file


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_tok_dir):
    return tiny_llama_tok_dir


def test_eval_windows_are_consecutive_and_drop_the_tail():
    tokens = torch.arange(10)
    w = data.eval_windows(tokens, 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert data.eval_windows(tokens, 3, 2).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="4 windows of 3 tokens; the text has 3"):
        data.eval_windows(tokens, 3, 4)
    with pytest.raises(ValueError, match=">= 2"):
        data.eval_windows(tokens, 1)


def test_calibration_windows_follow_the_seeded_numpy_offsets():
    tokens = torch.arange(1000) * 7
    w = data.calibration_windows(tokens, 5, 50, seed=3)
    offsets = np.random.default_rng(3).integers(0, 1000 - 50 + 1, size=5)
    assert w.shape == (5, 50)
    for row, off in zip(w, offsets):
        assert row.tolist() == (torch.arange(off, off + 50) * 7).tolist()  # a contiguous slice inside the text
    assert torch.equal(w, data.calibration_windows(tokens, 5, 50, seed=3))
    assert not torch.equal(w, data.calibration_windows(tokens, 5, 50, seed=4))


def test_calibration_window_can_cover_the_whole_text():
    tokens = torch.arange(8)
    assert data.calibration_windows(tokens, 3, 8, seed=0).tolist() == [list(range(8))] * 3
    with pytest.raises(ValueError, match="fewer than one sequence"):
        data.calibration_windows(tokens, 1, 9, seed=0)


def test_calib_spec_validates():
    with pytest.raises(ValueError, match="n_samples"):
        data.CalibSpec("self", 0, 16, 0)
    with pytest.raises(ValueError, match="seq_len"):
        data.CalibSpec("self", 4, 1, 0)
    with pytest.raises(ValueError, match="source"):
        data.CalibSpec("", 4, 16, 0)
    assert data.CalibSpec("self", 4, 16, 1).n_tokens == 64


def test_empty_or_missing_text_is_an_error(tmp_path, tiny_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    tok = _tokenizer(tiny_dir)
    with pytest.raises(ValueError, match="empty"):
        data.load_calibration(data.CalibSpec(str(empty), 2, 8, 0), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_calibration(data.CalibSpec(str(tmp_path / "nope.txt"), 2, 8, 0), tokenizer=tok)


def test_file_calibration_tokenizes_without_special_tokens(tmp_path, tiny_dir):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    path = tmp_path / "calib.txt"
    path.write_text(text, encoding="utf-8")
    w = data.load_calibration(data.CalibSpec(str(path), 4, 32, 7), tokenizer=_tokenizer(tiny_dir))
    raw = torch.tensor(list(text.encode()))  # the test tokenizer maps each byte to its own id
    offsets = np.random.default_rng(7).integers(0, raw.numel() - 32 + 1, size=4)
    assert torch.equal(w, torch.stack([raw[o:o + 32] for o in offsets]))


def test_self_calibration_is_seeded(tiny_llama):
    a = data.sample_from_model(tiny_llama, 3, 6, seed=5, batch_size=2)
    b = data.sample_from_model(tiny_llama, 3, 6, seed=5)
    c = data.sample_from_model(tiny_llama, 3, 6, seed=6)
    assert a.shape == (3, 6) and a.dtype == torch.long
    assert torch.equal(a, b)  # same seed, different batching: identical tokens
    assert not torch.equal(a, c)
    bos = tiny_llama.config.bos_token_id
    assert (a[:, 0] == bos).all() and int(a.max()) < tiny_llama.config.vocab_size


def test_self_calibration_needs_the_model():
    with pytest.raises(ValueError, match="needs the model"):
        data.load_calibration(data.CalibSpec("self", 2, 8, 0))


def test_hf_source_errors_are_clear(tiny_dir):
    tok = _tokenizer(tiny_dir)
    with pytest.raises(ValueError, match="hf:NAME"):
        data.load_calibration(data.CalibSpec("hf:", 2, 8, 0), tokenizer=tok)
    with pytest.raises(ValueError, match="could not load Hugging Face dataset"):
        data.load_calibration(data.CalibSpec("hf:matq-no-such-dataset-xyz", 2, 8, 0), tokenizer=tok)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MATQ_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    assert data.data_dir(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="MATQ_DATA_DIR"):
        data.data_file(data.WIKITEXT_TEST)
    monkeypatch.delenv("MATQ_DATA_DIR")
    assert data.data_dir().name == "data" and data.data_dir().parent.name == "shared"


@pytest.mark.parametrize("relative", sorted(data.SHARED_FILES))
def test_shared_data_checksums(data_dir, relative):
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} not present")
    assert sha256_file(path) == data.SHARED_FILES[relative]


def _tokenizer(model_dir):
    from matq_compile.evaluate import load_tokenizer

    return load_tokenizer(model_dir)

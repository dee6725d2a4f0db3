"""Faults a user meets through the real `matq` process: one-line errors (traceback only with --verbose), SIGTERM /
SIGINT / SIGKILL during a write (the MATQ_TEST_HOLD_WRITE hook of matq_compile.interrupts pauses the write), stale
temporaries swept by the next run, and outputs that honour the umask."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matq_compile.interrupts import HOLD_ENV


def matq_proc(*args: str, env: dict | None = None, umask: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matq_compile.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            umask=-1 if umask is None else umask)


def matq(*args: str, umask: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    p = matq_proc(*args, umask=umask)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def held(args: list[str], marker: Path, tmpdir: Path) -> subprocess.Popen:
    """A matq process paused inside its first atomic write (the marker file names the temporary being written)."""
    p = matq_proc(*args, env={HOLD_ENV: str(marker), "TMPDIR": str(tmpdir)})
    deadline = time.monotonic() + 240
    while not marker.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"never reached the write: {p.communicate()[1][-2000:]}")
        time.sleep(0.1)
    return p


def hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR " in ln]


@pytest.fixture(scope="module")
def ckpt(tiny_llama_dir, tiny_llama_tok_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.quant.sequential import quantize_model

    spec = QuantSpec(method="rtn", bits=8, group_size=32)
    qm = quantize_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(),
                        torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(4)), spec)
    return save_checkpoint(tmp_path_factory.mktemp("faults") / "ckpt", layers=qm.layers, tensors=qm.tensors,
                           spec=spec, sensitivity=qm.sensitivity, source={"model": "tiny"},
                           extra_files={"config.json": tiny_llama_dir / "config.json",
                                        "tokenizer.json": tiny_llama_tok_dir / "tokenizer.json"})


def compile_args(ckpt: Path, out: Path) -> list[str]:
    return ["compile", "--checkpoint", str(ckpt), "--bits", "4", "--allow-untuned", "--max-seq-len", "64",
            "--out", str(out)]


def test_user_error_is_one_line_and_verbose_adds_the_traceback(ckpt, tmp_path):
    (tmp_path / "o").write_text("a file, not a build directory")
    res = matq(*compile_args(ckpt, tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(error_lines(res.stderr)) == 1 and "is a file; give a directory" in res.stderr
    res = matq("--verbose", *compile_args(ckpt, tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" in res.stderr and "preflight" in res.stderr
    assert (tmp_path / "o").read_text() == "a file, not a build directory"


def test_sigterm_during_compile_removes_its_temporaries(ckpt, tmp_path):
    tmpdir = tmp_path / "tmp"  # TVM's temporary object files go here (TMPDIR)
    tmpdir.mkdir()
    out = tmp_path / "out" / "build"
    p = held(compile_args(ckpt, out), tmp_path / "marker", tmpdir)
    assert any(n.startswith(".build.") for n in hidden(out.parent))  # the build being written
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert error_lines(err) and "interrupted (SIGTERM)" in error_lines(err)[-1]
    assert list(out.parent.iterdir()) == [] and list(tmpdir.iterdir()) == []


def test_sigint_during_a_search_write_exits_130_without_traceback(ckpt, tmp_path):
    out = tmp_path / "s"
    p = held(["search", "--checkpoint", str(ckpt), "--budget", "avg-bits:4", "--out", str(out)], tmp_path / "m",
             tmp_path)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "KeyboardInterrupt" not in err and "Traceback" not in err, err[-2000:]
    assert "interrupted (SIGINT)" in err and list(out.iterdir()) == []


def test_sigkill_leftovers_are_swept_by_the_next_compile_whose_build_honours_the_umask(ckpt, tmp_path):
    out = tmp_path / "build"
    p = held(compile_args(ckpt, out), tmp_path / "marker", tmp_path)
    p.kill()  # no handler runs: the half-written build stays behind
    p.communicate(timeout=60)
    left = [n for n in hidden(tmp_path) if n.startswith(".build.")]
    assert left and not out.exists()
    res = matq(*compile_args(ckpt, out), umask=0o027)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not any(n.startswith(".build.") for n in hidden(tmp_path)) and f"removed {tmp_path / left[0]}" in res.stderr
    assert out.stat().st_mode & 0o777 == 0o750  # mkdtemp's 0700 widened to what the umask allows
    for name in ("weights.safetensors", "manifest.json", "SHA256SUMS", "tokenizer.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name  # safetensors and mkstemp write 0600


def test_only_dead_writers_temporaries_are_swept(tmp_path):
    from matq_compile._tmpfiles import sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f".out.{dead.pid}.abcdefgh.tmp": True, ".out.k2j4_x9z.tmp": True,  # dead writer, older untagged name
             f".out.{os.getpid()}.abcdefgh.tmp": False,  # a live writer (this process)
             f".out.json.{dead.pid}.abcdefgh.tmp": False, "out": False}  # another output's temporary, the output
    for n in names:
        (tmp_path / n).mkdir()
    removed = sweep_stale(tmp_path / "out")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)

"""`matq compile --act int8|float` through the CLI on the tiny Llama: the int8-activation build runs, records its
mode, calls only int8-activation kernels, and scores close to the float build; targets without a byte dot product
are refused with one line before anything is built."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_cli_compile import ckpt, matq  # noqa: F401 - the module fixture is shared

pytest.importorskip("matq_compile._tvm")


def _host_has_byte_dot() -> bool:
    from matq_compile import targets
    from matq_compile.lower.int8_intrin import target_isa

    return target_isa(targets.load("host").to_tvm()) is not None


def _compile(ckpt, out, *extra: str):  # noqa: F811
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "4", "--target", "host", "--out", str(out),
               "--allow-untuned", "--max-seq-len", "64", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.skipif(not _host_has_byte_dot(), reason="this CPU has no AVX2/VNNI byte dot product")
def test_int8_build_runs_and_scores_close_to_float(ckpt, tmp_path):  # noqa: F811
    from matq_compile import runtime

    assert _compile(ckpt, tmp_path / "f")["act"] == "float"
    assert _compile(ckpt, tmp_path / "i", "--act", "int8")["act"] == "int8"
    lib = (tmp_path / "i" / "model.so").read_bytes()
    assert b"_a8" in lib and b"_a8" not in (tmp_path / "f" / "model.so").read_bytes()
    ids = list(np.random.default_rng(0).integers(0, 256, 40))
    lf, li = (runtime.load(tmp_path / d).score(ids) for d in ("f", "i"))
    assert li.shape == lf.shape and np.isfinite(li).all()
    assert np.abs(li - lf).max() < 0.05 * np.abs(lf).max()  # activation rounding, not a different model
    res = matq("run", str(tmp_path / "i"), "--prompt", "hello", "--max-new-tokens", "4", "--ignore-eos",
               check_no_torch=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("target", ["llvm-aarch64", "cuda-sm90"])
def test_int8_is_refused_for_targets_without_a_byte_dot_product(ckpt, tmp_path, target):  # noqa: F811
    out = tmp_path / "o"
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "4", "--target", target, "--out", str(out),
               "--allow-untuned", "--act", "int8")
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if "--act int8" in line]
    assert len(err) == 1 and "use --act float" in err[0], res.stderr
    assert not out.exists()


def test_act_flag_rejects_other_modes(ckpt, tmp_path):  # noqa: F811
    res = matq("compile", "--checkpoint", str(ckpt), "--bits", "4", "--out", str(tmp_path / "o"), "--act", "int4")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_int8_is_refused_for_switchable_builds(ckpt, tmp_path):  # noqa: F811
    """A switchable build's kernels read the parent's nested planes, which the int8 kernels do not decode."""
    res = matq("compile", "--checkpoint", str(ckpt), "--switchable", "--bits", "2,4", "--target", "host",
               "--out", str(tmp_path / "o"), "--allow-untuned", "--act", "int8")
    assert res.returncode == 2 and "not available for switchable builds" in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()

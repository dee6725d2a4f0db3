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


@pytest.mark.skipif(not _host_has_byte_dot(), reason="this CPU has no AVX2/VNNI byte dot product")
def test_switchable_int8_build_runs_at_each_width(ckpt, tmp_path):  # noqa: F811
    """`--switchable --act int8`: one build whose int8-activation kernels read the nested planes, run per width."""
    out = tmp_path / "o"
    res = matq("compile", "--checkpoint", str(ckpt), "--switchable", "--bits", "2,4", "--target", "host",
               "--out", str(out), "--allow-untuned", "--max-seq-len", "64", "--act", "int8")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["act"] == "int8" and manifest["switch"]["widths"] == [2, 4]
    for r in ("2", "4"):
        res = matq("run", str(out), "--prompt", "hello", "--bits", r, "--max-new-tokens", "3", "--ignore-eos",
                   check_no_torch=True)
        assert res.returncode == 0, res.stderr


@pytest.mark.skipif(not _host_has_byte_dot(), reason="this CPU has no AVX2/VNNI byte dot product")
def test_bench_kernels_times_the_int8_kernels_of_a_switchable_split(tmp_path):
    """`matq bench-kernels --act int8 --switchable --planes 4,4`: the int8 kernels of that build's layout, timed."""
    from matq_compile import targets
    from matq_compile.layout import KernelKey
    from matq_compile.search.latency import load_latency_table

    out = tmp_path / "lat.json"
    res = matq("bench-kernels", "--target", "host", "--shape", "64x128", "--bits", "3,8", "--m-buckets", "1",
               "--switchable", "--planes", "4,4", "--slice-rule", "midpoint", "--act", "int8", "--repeat", "3",
               "--db-dir", str(tmp_path / "db"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    table = load_latency_table(out, targets.load("host").name)
    assert set(table.entries) == {KernelKey(64, 128, b, 64, 1, nested="m44") for b in (3, 8)}
    assert all(t > 0 for t in table.entries.values())
    bad = matq("bench-kernels", "--target", "host", "--shape", "64x128", "--planes", "4,4", "--out", str(out))
    assert bad.returncode == 2 and "add --switchable" in bad.stderr

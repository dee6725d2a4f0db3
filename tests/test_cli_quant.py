"""`matq quantize` and `matq eval` on the tiny model: one real subprocess run, then bad inputs in process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matq_compile.cli import main

TEXT = ("= Valkyria Chronicles =\n Senjō no Valkyria 3 is a tactical role-playing game developed by Sega. "
        "The game began development in 2010, carrying over a large portion of the work done on its predecessor. ")


@pytest.fixture(scope="module")
def setup(tiny_llama_tok_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_llama_tok_dir
    (root / "calib.txt").write_text(TEXT * 10, encoding="utf-8")
    (root / "test.txt").write_text(TEXT * 3, encoding="utf-8")
    return root, model


def _quantize_args(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["quantize", "--model", str(model), "--out", str(out), "--method", "gptq", "--group-size", "32",
            "--calibration", str(root / "calib.txt"), "--calibration-samples", "4", "--calibration-seq-len", "32",
            "--eval-text", str(root / "test.txt"), "--eval-seq-len", "64", "--eval-windows", "2", *extra]


@pytest.fixture(scope="module")
def quantized(setup):
    """`matq quantize` as a real subprocess, then `matq eval` of its 4-bit slice in process."""
    root, model = setup
    out = root / "ckpt"
    env = dict(os.environ, MATQ_CACHE=str(root / "cache"))
    cmd = [sys.executable, "-m", "matq_compile.cli"]
    q = subprocess.run(cmd + _quantize_args(root, model, out, "--act-order", "--eval-bits", "8,4",
                                            "--eval-json", str(root / "table.json")),
                       capture_output=True, text=True, env=env, timeout=300)
    assert q.returncode == 0, q.stderr
    assert main(["eval", "--checkpoint", str(out), "--bits", "4", "--text", str(root / "test.txt"),
                 "--seq-len", "64", "--windows", "2", "--out", str(root / "eval.json")]) == 0
    return root, model, out, q.stderr


def test_quantize_writes_checkpoint_and_table(quantized):
    from matq_compile.ckpt import load_checkpoint

    root, model, out, log = quantized
    ckpt = load_checkpoint(out)
    assert ckpt.spec.method == "gptq" and ckpt.spec.act_order and len(ckpt.layer_names) == 14
    assert ckpt.source["calibration"]["n_samples"] == 4 and ckpt.source["calibration_tokens"] == 128
    assert ckpt.source["model"] == str(model.resolve())  # resolve_model() accepts it again
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    table = json.loads((root / "table.json").read_text())
    assert set(table["ppl"]) == {"fp", "8", "4"} and table["checkpoint_hash"] == ckpt.hash
    assert "| PPL |" in log


def test_eval_of_a_slice_matches_the_quantize_table(quantized):
    root, *_ = quantized
    table = json.loads((root / "table.json").read_text())
    result = json.loads((root / "eval.json").read_text())
    assert result["bits"] == 4 and result["result"]["n_windows"] == 2
    assert result["result"]["ppl"] == pytest.approx(table["ppl"]["4"], rel=1e-5)


def _plan(layers: dict[str, int], checkpoint_hash: str) -> dict:
    """A plan as `matq search` writes it (search/allocation.py)."""
    return {"format_version": 1, "layers": layers, "checkpoint_hash": checkpoint_hash, "levels": [2, 3, 4, 6, 8],
            "solver": "milp"}


def test_eval_plan_and_float_model(quantized, tmp_path):
    from matq_compile.ckpt import load_checkpoint

    root, model, out, _ = quantized
    ckpt = load_checkpoint(out)
    common = ["--text", str(root / "test.txt"), "--seq-len", "64", "--windows", "2"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan({n: 4 for n in ckpt.layer_names}, ckpt.hash)))
    args = ["eval", "--checkpoint", str(out), "--plan", str(plan), "--out", str(tmp_path / "p.json"), *common]
    assert main(args) == 0
    by_plan = json.loads((tmp_path / "p.json").read_text())["result"]["ppl"]
    assert by_plan == pytest.approx(json.loads((root / "eval.json").read_text())["result"]["ppl"], rel=1e-6)
    assert main(["eval", "--model", str(model), "--out", str(tmp_path / "f.json"), *common]) == 0
    fp = json.loads((tmp_path / "f.json").read_text())["result"]["ppl"]
    assert fp == pytest.approx(json.loads((root / "table.json").read_text())["ppl"]["fp"], rel=1e-6)


def test_eval_rejects_foreign_or_incomplete_plans(quantized, tmp_path):
    from matq_compile.ckpt import load_checkpoint

    root, _, out, _ = quantized
    ckpt = load_checkpoint(out)
    common = ["--text", str(root / "test.txt"), "--seq-len", "64", "--windows", "1"]
    cases = {"foreign": _plan({n: 4 for n in ckpt.layer_names}, "0" * 64),
             "incomplete": _plan({ckpt.layer_names[0]: 4}, ckpt.hash),
             "bad_bits": _plan({n: 1 for n in ckpt.layer_names}, ckpt.hash),
             "no_version": {"layers": {n: 4 for n in ckpt.layer_names}, "checkpoint_hash": ckpt.hash}}
    for name, plan in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(plan))
        assert main(["eval", "--checkpoint", str(out), "--plan", str(path), *common]) == 2, name
    assert main(["eval", "--checkpoint", str(out), "--bits", "9", *common]) == 2
    assert main(["eval", "--checkpoint", str(out), *common]) == 2  # neither --bits nor --plan


@pytest.mark.parametrize("extra, problem", [
    (["--bits", "9"], "bits outside 2..8"),
    (["--method", "matgptq", "--trained-bits", "8,4,1"], "trained bits outside 2..8"),
    (["--group-size", "96"], "group size not dividing in_features"),
    (["--eval-bits", "8,1"], "unknown eval bits"),
])
def test_quantize_bad_options_leave_no_output(setup, tmp_path, extra, problem):
    root, model = setup
    out = tmp_path / "ckpt"
    assert main(_quantize_args(root, model, out, *extra)) == 2, problem
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_quantize_refuses_to_replace_a_foreign_directory(setup, tmp_path):
    root, model = setup
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(_quantize_args(root, model, tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_quantize_missing_model_or_empty_calibration_leaves_no_output(setup, tmp_path):
    root, model = setup
    out = tmp_path / "ckpt"
    assert main(_quantize_args(root, tmp_path / "missing-model", out)) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = _quantize_args(root, model, out)
    args[args.index("--calibration") + 1] = str(empty)
    assert main(args) == 2
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["empty.txt"]


def test_eval_refuses_a_corrupt_checkpoint(quantized, tmp_path):
    import shutil

    root, _, out, _ = quantized
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shard = next(broken.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["eval", "--checkpoint", str(broken), "--bits", "4", "--text", str(root / "test.txt"),
                 "--seq-len", "64", "--windows", "1"]) == 2


def test_same_seed_gives_identical_checkpoint_bytes(setup, tmp_path):
    root, model = setup
    for name in ("a", "b"):
        args = _quantize_args(root, model, tmp_path / name, "--method", "rtn", "--seed", "3", "--eval-windows", "0")
        assert main(args) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_recipes_and_explicit_overrides(setup, tmp_path):
    """--recipe picks R/λ/μ/feedback/refit for matgptq; explicit flags win; rtn/gptq ignore the recipe."""
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.quant.recipes import RECIPES

    root, model = setup
    runs = {"default": [], "reference": ["--recipe", "reference"],
            "override": ["--error-feedback", "shared", "--refit", "none", "--trained-bits", "8,4,2",
                         "--no-act-order"],
            "gptq": ["--method", "gptq", "--bits", "4"]}
    specs = {}
    for name, extra in runs.items():
        method = [] if name == "gptq" else ["--method", "matgptq"]
        assert main(_quantize_args(root, model, tmp_path / name, *method, *extra, "--eval-windows", "0")) == 0
        specs[name] = load_checkpoint(tmp_path / name).spec
    default, reference = RECIPES["default"], RECIPES["reference"]
    for name, want in (("default", default), ("reference", reference)):
        got = specs[name]
        assert (got.trained_bits, got.feedback, got.refit, got.mu) == (
            want["trained_bits"], want["feedback"], tuple(sorted(want["refit"], reverse=True)), want["mu"]), name
        assert dict(got.lambdas) == dict(want["lambdas"]), name
        assert (got.act_order, got.static_groups) == (want["act_order"], want["static_groups"]), name
    assert specs["default"].act_order and specs["default"].static_groups and not specs["reference"].act_order
    over = specs["override"]
    assert over.feedback == "shared" and over.refit == () and over.trained_bits == (8, 4, 2)
    assert not over.act_order and over.static_groups  # --no-act-order wins; the recipe's static groups stay
    assert dict(over.lambdas) == {r: w for r, w in default["lambdas"] if r in (8, 4, 2)}
    assert specs["gptq"].refit == () and specs["gptq"].feedback == "shared" and not specs["gptq"].act_order
    ck = load_checkpoint(tmp_path / "default")
    assert all(sorted(res.slice_scales) == sorted(default["refit"]) for res in ck.layers.values())


def test_default_recipe_is_deterministic(setup, tmp_path):
    root, model = setup
    for name in ("a", "b"):
        assert main(_quantize_args(root, model, tmp_path / name, "--method", "matgptq", "--eval-windows", "0")) == 0
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f

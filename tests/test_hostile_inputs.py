"""Hostile and mistaken inputs for every command: each gives exit code 2, exactly one error line naming the problem,
and writes nothing (no output, no hidden temporary). Runs `main()` in process on a tiny checkpoint and build."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from matq_compile.cli import main

TEXT = "The game began development in 2010, carrying over a large portion of the work done on its predecessor. " * 8


@dataclass
class Env:
    ckpt: Path
    build: Path
    model: Path
    work: Path  # the case's own directory: everything it may write lands here

    def file(self, name: str, text: str = "x") -> Path:
        p = self.work / name
        p.write_text(text)
        return p

    def dir(self, name: str) -> Path:
        p = self.work / name
        p.mkdir()
        return p

    def build_copy(self) -> Path:
        return Path(shutil.copytree(self.build, self.work / "build"))

    def ckpt_with_shard(self, change: Callable[[bytes], bytes]) -> Path:
        """A copy of the checkpoint whose (first) safetensors shard is rewritten by `change`."""
        c = Path(shutil.copytree(self.ckpt, self.work / "ckpt"))
        shard = min(c.glob("*.safetensors"))
        shard.write_bytes(change(shard.read_bytes()))
        return c

    def plan(self, bits_of: Callable[[int], object]) -> Path:
        from matq_compile.ckpt import load_checkpoint

        ck = load_checkpoint(self.ckpt)
        layers = {n: bits_of(i) for i, n in enumerate(ck.layer_names)}
        return self.file("plan.json", json.dumps({"format_version": 1, "layers": layers, "checkpoint_hash": ck.hash,
                                                  "levels": [2, 3, 4, 6, 8], "solver": "milp"}))

    def db(self, record_line: str) -> Path:
        """A tuning database for this machine's target whose record file holds `record_line`."""
        from matq_compile import targets, tune

        d = self.work / "db"
        tune.check_database(d, targets.load("host"), create=True)
        committed = Path(__file__).resolve().parents[1] / "schedules" / "db" / targets.load("host").name
        if (committed / "database_workload.json").is_file():
            shutil.copyfile(committed / "database_workload.json", d / "database_workload.json")
        else:
            (d / "database_workload.json").write_text('["1", "module"]\n')
        (d / "database_tuning_record.json").write_text(record_line + "\n")
        return d


def unwritable(env: Env) -> Path:
    """A directory nobody may create files in: a 0500 folder (non-root) or a read-only system folder (root)."""
    if os.geteuid() != 0:
        d = env.dir("locked")
        d.chmod(0o500)
        return d / "out"
    for cand in (Path("/sys"), Path("/proc/1")):
        try:
            with tempfile.TemporaryFile(dir=cand):
                pass
        except OSError:
            return cand / "matq-out"
    pytest.skip("no unwritable directory on this machine")


def edit_manifest(build: Path, change: Callable[[dict], None], rehash: bool = False) -> None:
    m = json.loads((build / "manifest.json").read_text())
    change(m)
    (build / "manifest.json").write_text(json.dumps(m))
    if rehash:
        from matq_compile.runtime.verify import write_digests

        write_digests(build)


def swap_same_shape_params(m: dict) -> None:
    params = m["params"]
    for i, a in enumerate(params):
        for b in params[i + 1:]:
            if a["shape"] == b["shape"] and a["dtype"] == b["dtype"]:
                a["name"], b["name"] = b["name"], a["name"]
                return
    raise AssertionError("no two parameters share a shape")


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def rehash(build: Path) -> None:
    from matq_compile.runtime.verify import write_digests

    write_digests(build)


def _q(e: Env, *extra: str) -> list[str]:
    calib = e.file("calib.txt", TEXT)
    return ["quantize", "--model", str(e.model), "--out", str(e.work / "ckpt"), "--method", "rtn", "--group-size",
            "32", "--calibration", str(calib), "--calibration-samples", "2", "--calibration-seq-len", "16",
            "--eval-windows", "0", *extra]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def _e(e: Env, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(e.ckpt), "--text", str(e.file("test.txt", TEXT)), "--seq-len", "32",
            "--windows", "1", *extra]


def _keys(*extra: str) -> list[str]:
    return ["--target", "host", "--shape", "64x128", "--group", "32", "--bits", "4", "--m-buckets", "1", *extra]


def _s(e: Env, *extra: str) -> list[str]:
    return ["search", "--checkpoint", str(e.ckpt), *extra]


def _c(e: Env, *extra: str) -> list[str]:
    return ["compile", "--checkpoint", str(e.ckpt), "--allow-untuned", "--max-seq-len", "64", *extra]


def _r(build: Path, *extra: str) -> list[str]:
    return ["run", str(build), "--prompt", "hi", "--max-new-tokens", "2", *extra]


def cuda_labelled_build(e: Env) -> Path:
    """A build whose (rehashed) manifest says CUDA: what a GPU build looks like to a machine without a GPU."""
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA device")
    b = e.build_copy()
    edit_manifest(b, lambda m: m["target"].update(kind="cuda"), rehash=True)
    return b


def _double_cache(m: dict) -> None:
    """max_seq_len and the recorded cache shapes doubled together: consistent, but not what model.so was built for."""
    m["model"]["max_seq_len"] *= 2
    m["kv_cache"]["kt"][2] *= 2
    m["kv_cache"]["v"][2] *= 2


def _run_edited(change: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    def prepare(e: Env) -> list[str]:
        b = e.build_copy()
        change(b)
        return _r(b)
    return prepare


def _table(rows: list) -> dict:
    """A latency table for this machine's target and committed database whose rows are `rows`."""
    from matq_compile import schedules, targets, tune

    spec = targets.load("host")
    return {"format_version": 1, "target": spec.name, "tvm_version": "x",
            "db_hash": tune.database_hash(schedules.db_dir(spec)), "rows": rows}


BAD_RECORD = "[0, [1, 2]]"  # valid JSON, not a tuning record
FAR_RECORD = '[999, [[], [1.0], {"kind": "llvm"}, []]]'  # a record of a workload the database does not hold

# (id, prepare(env) -> argv, distinctive substring of the one error line)
CASES: list[tuple[str, Callable[[Env], list[str]], str]] = [
    # quantize: output, arguments and files checked before the model loads
    ("quantize-out-is-file", lambda e: _with(_q(e), "--out", str(e.file("o"))), "is a file; give a directory"),
    ("quantize-out-unwritable", lambda e: _with(_q(e), "--out", str(unwritable(e))), "cannot write in"),
    ("quantize-group-not-dividing", lambda e: _with(_q(e), "--group-size", "96"), "does not divide in_features"),
    ("quantize-group-zero", lambda e: _with(_q(e), "--group-size", "0"), "--group-size must be a positive"),
    ("quantize-eval-text-missing", lambda e: _q(e, "--eval-text", str(e.work / "nope.txt")), "no such file"),
    ("quantize-eval-json-dir", lambda e: _q(e, "--eval-json", str(e.dir("j"))), "is a directory; give a file"),
    ("quantize-bits", lambda e: _with(_q(e), "--bits", "9"), "2..8"),
    ("quantize-model-missing", lambda e: _with(_q(e), "--model", str(e.work / "no-model")), "no-model"),
    ("quantize-out-foreign-dir", lambda e: _with(_q(e), "--out", str(e.file("notes.txt").parent)),
     "not a matq checkpoint"),
    # eval
    ("eval-text-missing", lambda e: _with(_e(e, "--bits", "4"), "--text", str(e.work / "nope.txt")), "no such file"),
    ("eval-text-dir", lambda e: _with(_e(e, "--bits", "4"), "--text", str(e.dir("t"))), "is a directory; give a file"),
    ("eval-ckpt-missing", lambda e: _with(_e(e, "--bits", "4"), "--checkpoint", str(e.work / "c")), "does not exist"),
    ("eval-bits", lambda e: _e(e, "--bits", "9"), "bits must be an integer in 2..8"),
    ("eval-shard-too-large", lambda e: _with(_e(e, "--bits", "4"), "--checkpoint",
                                             str(e.ckpt_with_shard(lambda b: b + b"\0" * 64))),
     "too large: appended to or replaced?"),
    ("eval-shard-truncated", lambda e: _with(_e(e, "--bits", "4"), "--checkpoint",
                                             str(e.ckpt_with_shard(lambda b: b[:-64]))), "(truncated?)"),
    ("eval-plan-fractional", lambda e: _e(e, "--plan", str(e.plan(lambda i: 4.7))), "bits 4.7"),
    ("eval-plan-not-json", lambda e: _e(e, "--plan", str(e.file("p.json", "{"))), "not a JSON plan"),
    ("eval-out-dir", lambda e: _e(e, "--bits", "4", "--out", str(e.dir("o"))), "is a directory; give a file"),
    ("eval-windows-zero", lambda e: _with(_e(e, "--bits", "4"), "--windows", "0"), "--windows must be >= 1"),
    ("eval-no-bits", lambda e: _e(e), "needs --bits or --plan"),
    # tune
    ("tune-trials-zero", lambda e: ["tune", *_keys("--trials", "0", "--db-dir", str(e.work / "db"))],
     "--trials must be >= 1"),
    ("tune-trials-negative", lambda e: ["tune", *_keys("--trials", "-3", "--db-dir", str(e.work / "db"))],
     "--trials must be >= 1"),
    ("tune-bad-shape", lambda e: ["tune", *_with(_keys("--db-dir", str(e.work / "db")), "--shape", "12x")],
     "--shape must look like"),
    ("tune-bad-bits", lambda e: ["tune", *_with(_keys("--db-dir", str(e.work / "db")), "--bits", "4,x")],
     "--bits must be comma-separated integers"),
    ("tune-unknown-target", lambda e: ["tune", *_with(_keys("--db-dir", str(e.work / "db")), "--target", "tpu9")],
     "unknown target"),
    ("tune-no-shapes", lambda e: ["tune", "--target", "host", "--db-dir", str(e.work / "db")],
     "give --checkpoint or at least one --shape"),
    ("tune-db-is-file", lambda e: ["tune", *_keys("--db-dir", str(e.file("db")))], "is a file; give a directory"),
    ("tune-records-not-records", lambda e: ["tune", *_keys("--trials", "1", "--db-dir", str(e.db(BAD_RECORD)))],
     "expected [workload index"),
    ("tune-workload-out-of-range", lambda e: ["tune", *_keys("--trials", "1", "--db-dir", str(e.db(FAR_RECORD)))],
     "workload index 999 is out of range"),
    # bench-kernels
    ("bench-out-dir", lambda e: ["bench-kernels", *_keys("--out", str(e.dir("o")))], "is a directory; give a file"),
    ("bench-out-unwritable", lambda e: ["bench-kernels", *_keys("--out", str(unwritable(e)))], "cannot write in"),
    ("bench-repeat-zero", lambda e: ["bench-kernels", *_keys("--repeat", "0")], "--repeat must be >= 1"),
    ("bench-chain-zero", lambda e: ["bench-kernels", *_keys("--chain", "0")], "--chain must be >= 1"),
    ("bench-chain-on-gpu", lambda e: ["bench-kernels", *_with(_keys("--chain", "4", "--out", str(e.work / "t.json")),
                                                              "--target", "cuda-sm90")], "--chain is for CPU targets"),
    ("bench-db-missing", lambda e: ["bench-kernels", *_keys("--db-dir", str(e.work / "nodb"), "--out",
                                                            str(e.work / "t.json"))], "does not exist"),
    ("bench-records-not-records", lambda e: ["bench-kernels", *_keys("--db-dir", str(e.db(BAD_RECORD)), "--out",
                                                                     str(e.work / "t.json"))],
     "expected [workload index"),
    # search
    ("search-out-is-file", lambda e: _s(e, "--budget", "avg-bits:4", "--out", str(e.file("o"))),
     "is a file; give a directory"),
    ("search-out-unwritable", lambda e: _s(e, "--budget", "avg-bits:4", "--out", str(unwritable(e))),
     "cannot write in"),
    ("search-no-budget", lambda e: _s(e, "--out", str(e.work / "s")), "give at least one --budget"),
    ("search-bad-budget", lambda e: _s(e, "--budget", "speed:9", "--out", str(e.work / "s")), "budget must look like"),
    ("search-bad-levels", lambda e: _s(e, "--budget", "avg-bits:4", "--levels", "2,9", "--out", str(e.work / "s")),
     "levels must be distinct integers in 2..8"),
    ("search-latency-table-not-object", lambda e: _s(e, "--target", "host", "--budget", "latency:1ms", "--no-measure",
                                                     "--latency-table", str(e.file("t.json", "[]")), "--out",
                                                     str(e.work / "s")), "expected a JSON object, got list"),
    ("search-latency-table-bad-rows", lambda e: _s(e, "--target", "host", "--budget", "latency:1ms", "--no-measure",
                                                   "--latency-table", str(e.file("t.json", json.dumps(_table([{}])))),
                                                   "--out", str(e.work / "s")), "is not a valid latency table"),
    ("search-ckpt-missing", lambda e: ["search", "--checkpoint", str(e.work / "c"), "--budget", "avg-bits:4",
                                       "--out", str(e.work / "s")], "does not exist"),
    # compile
    ("compile-out-is-file", lambda e: _c(e, "--bits", "4", "--out", str(e.file("o"))), "is a file; give a directory"),
    ("compile-out-unwritable", lambda e: _c(e, "--bits", "4", "--out", str(unwritable(e))), "cannot write in"),
    ("compile-plan-fractional", lambda e: _c(e, "--plan", str(e.plan(lambda i: 4.7)), "--out", str(e.work / "b")),
     "bits 4.7"),
    ("compile-plan-string-bits", lambda e: _c(e, "--plan", str(e.plan(lambda i: "4")), "--out", str(e.work / "b")),
     "bits '4'"),
    ("compile-plan-missing", lambda e: _c(e, "--plan", str(e.work / "p.json"), "--out", str(e.work / "b")),
     "no such file"),
    ("compile-bits", lambda e: _c(e, "--bits", "9", "--out", str(e.work / "b")), "bits must be an integer in 2..8"),
    ("compile-max-seq-len", lambda e: _with(_c(e, "--bits", "4", "--out", str(e.work / "b")), "--max-seq-len", "0"),
     "--max-seq-len must be >= 16"),
    ("compile-unknown-target", lambda e: _c(e, "--bits", "4", "--target", "tpu9", "--out", str(e.work / "b")),
     "unknown target"),
    ("compile-out-is-input", lambda e: _c(e, "--bits", "4", "--out", str(e.ckpt)), "must not be the input's own"),
    ("compile-dump-ir-is-file", lambda e: _c(e, "--bits", "4", "--dump-ir", str(e.file("ir")), "--out",
                                             str(e.work / "b")), "is a file; give a directory"),
    ("compile-records-not-records", lambda e: _c(e, "--bits", "4", "--db-dir", str(e.db(BAD_RECORD)), "--out",
                                                 str(e.work / "b")), "expected [workload index"),
    # run: arguments
    ("run-json-dir", lambda e: _r(e.build, "--json", str(e.dir("j"))), "is a directory; give a file"),
    ("run-json-unwritable", lambda e: _r(e.build, "--json", str(unwritable(e))), "cannot write in"),
    ("run-max-new-tokens-zero", lambda e: _with(_r(e.build), "--max-new-tokens", "0"), "--max-new-tokens must be"),
    ("run-max-new-tokens-beyond-cache", lambda e: _with(_r(e.build), "--max-new-tokens", "1019"),
     "the build holds max_seq_len 64"),
    ("run-device-cuda-on-cpu-build", lambda e: _r(e.build, "--device", "cuda"), "run it with --device cpu"),
    ("run-device-cuda-without-gpu", lambda e: _r(cuda_labelled_build(e), "--device", "cuda"),
     "no cuda device on this machine"),
    ("run-device-unknown", lambda e: _r(e.build, "--device", "tpu"), "--device 'tpu'"),
    ("run-build-missing", lambda e: _r(e.work / "nope"), "manifest.json is missing"),
    # run: a build edited after compiling is refused before anything in it is loaded
    ("run-manifest-params-swapped", _run_edited(lambda b: edit_manifest(b, swap_same_shape_params)),
     "manifest.json is corrupt or was replaced"),
    ("run-manifest-params-swapped-rehashed",
     _run_edited(lambda b: edit_manifest(b, swap_same_shape_params, rehash=True)), "another parameter order"),
    ("run-manifest-drops-library", _run_edited(lambda b: edit_manifest(b, lambda m: m["files"].pop("model.so"))),
     "manifest.json is corrupt or was replaced"),
    ("run-digests-drop-library", _run_edited(lambda b: (b / "SHA256SUMS").write_text(
        "".join(ln + "\n" for ln in (b / "SHA256SUMS").read_text().splitlines() if not ln.endswith("model.so")))),
     "does not list model.so"),
    ("run-max-seq-len-edited", _run_edited(lambda b: edit_manifest(
        b, lambda m: m["model"].update(max_seq_len=4096))), "manifest.json is corrupt or was replaced"),
    ("run-max-seq-len-edited-rehashed", _run_edited(lambda b: edit_manifest(
        b, lambda m: m["model"].update(max_seq_len=4096), rehash=True)), "kv_cache shapes"),
    ("run-kv-cache-edited-rehashed", _run_edited(lambda b: edit_manifest(b, _double_cache, rehash=True)),
     "model.so refuses the kt_cache"),
    ("run-tokenizer-truncated", _run_edited(lambda b: truncate(b / "tokenizer.json")),
     "tokenizer.json is corrupt or was replaced"),
    ("run-tokenizer-truncated-rehashed", _run_edited(lambda b: (truncate(b / "tokenizer.json"), rehash(b))),
     "is not a valid tokenizer"),
    ("run-weights-truncated-rehashed", _run_edited(lambda b: (truncate(b / "weights.safetensors"), rehash(b))),
     "cannot read"),
    ("run-library-replaced", _run_edited(lambda b: (b / "model.so").write_bytes(b"\x7fELF" + b"\0" * 64)),
     "model.so is corrupt or was replaced"),
    ("run-digests-missing", _run_edited(lambda b: (b / "SHA256SUMS").unlink()), "has no SHA256SUMS"),
    ("run-digests-garbage", _run_edited(lambda b: (b / "SHA256SUMS").write_text("not a digest\n")),
     "not a 'SHA256  FILE' line"),
    ("run-unlisted-file", _run_edited(lambda b: (b / "extra.so").write_bytes(b"\0")), "does not list (extra.so)"),
]


@pytest.fixture(scope="module")
def env_base(tiny_llama_dir, tiny_llama_tok_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM

    from matq_compile.ckpt import save_checkpoint
    from matq_compile.config import QuantSpec
    from matq_compile.export import CompileOptions, compile_model
    from matq_compile.quant.sequential import quantize_model

    tmp = tmp_path_factory.mktemp("hostile")
    spec = QuantSpec(method="rtn", bits=8, group_size=32)
    qm = quantize_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(),
                        torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3)), spec)
    ckpt = save_checkpoint(tmp / "ckpt", layers=qm.layers, tensors=qm.tensors, spec=spec,
                           sensitivity=qm.sensitivity, source={"model": str(tiny_llama_tok_dir)},
                           extra_files={"config.json": tiny_llama_dir / "config.json",
                                        "tokenizer.json": tiny_llama_tok_dir / "tokenizer.json"})
    build = compile_model(ckpt, tmp / "build", bits=4, opts=CompileOptions(allow_untuned=True, max_seq_len=64))
    return ckpt, build, tiny_llama_tok_dir


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under the roots (hidden ones included), files with their size and mtime."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


@pytest.mark.parametrize("prepare, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(env_base, tmp_path, caplog, prepare, expect):
    ckpt, build, model = env_base
    env = Env(ckpt, build, model, tmp_path)
    argv = prepare(env)
    before = snapshot(tmp_path, ckpt, build)
    with caplog.at_level(logging.INFO, logger="matq_compile"):
        rc = main(argv)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2, f"exit {rc}; errors {errors}"
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert expect in errors[0], errors[0]
    assert snapshot(tmp_path, ckpt, build) == before, "the failed command wrote something"


def test_the_sweep_covers_every_command_with_forty_cases():
    commands = {c[0].split("-")[0] for c in CASES}
    assert commands == {"quantize", "eval", "tune", "bench", "search", "compile", "run"}
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


class WorkStarted(BaseException):
    """Raised by the stubbed expensive step: a BaseException, so no error handler can turn it into exit code 2."""


# The expensive first step of each command (loading, quantizing, compiling, measuring, tuning), stubbed out:
# the cases below must be refused before it starts.
EXPENSIVE = {"quantize": ["matq_compile.quantize_stage.quantize_to_checkpoint"],
             "eval": ["matq_compile.ckpt.load_checkpoint", "matq_compile.evaluate.load_model"],
             "tune": ["matq_compile.tune.tune"], "bench": ["matq_compile.bench.measure"],
             "search": ["matq_compile.ckpt.load_checkpoint"],
             "compile": ["matq_compile.export.compile_model", "matq_compile.export.compile_onnx"],
             "run": ["matq_compile.runtime.Model"]}
CHEAP = ["quantize-out-is-file", "quantize-out-unwritable", "quantize-group-not-dividing", "quantize-group-zero",
         "quantize-eval-json-dir", "eval-text-missing", "eval-text-dir", "eval-out-dir", "eval-windows-zero",
         "tune-trials-zero", "tune-db-is-file", "bench-out-dir", "bench-out-unwritable", "bench-repeat-zero",
         "search-out-is-file", "search-out-unwritable", "compile-out-is-file", "compile-out-unwritable",
         "compile-plan-missing", "compile-dump-ir-is-file", "compile-max-seq-len", "run-json-dir",
         "run-json-unwritable", "run-max-new-tokens-zero"]


@pytest.mark.parametrize("case_id", CHEAP)
def test_cheap_checks_come_before_the_work(env_base, tmp_path, monkeypatch, case_id):
    ckpt, build, model = env_base
    prepare = {c[0]: c[1] for c in CASES}[case_id]
    argv = prepare(Env(ckpt, build, model, tmp_path))

    def started(*args, **kwargs):
        raise WorkStarted(case_id)

    for target in EXPENSIVE[case_id.split("-")[0]]:
        monkeypatch.setattr(target, started)
    assert main(argv) == 2

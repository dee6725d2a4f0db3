"""Checkpoint io: bit-exact round trip, identical bytes, and refusal of anything inconsistent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from matq_compile.ckpt import CONFIG_NAME, load_checkpoint, save_checkpoint
from matq_compile.config import QuantSpec
from matq_compile.quant import quantize_weight
from matq_compile.quant.hessian import accumulate
from matq_compile.quant.sensitivity import layer_sensitivity


def make_parts(seed: int = 0, spec: QuantSpec | None = None):
    spec = spec or QuantSpec(act_order=True, sym=False, group_size=32)
    g = torch.Generator().manual_seed(seed)
    layers, sens = {}, {}
    for name, (out, inn) in {"model.layers.0.mlp.up_proj": (48, 64), "model.layers.0.mlp.down_proj": (64, 96)}.items():
        W = torch.randn(out, inn, generator=g)
        H, _ = accumulate(None, 0, torch.randn(256, inn, generator=g))
        layers[name] = quantize_weight(W, H, spec)
        sens[name] = layer_sensitivity(W, layers[name], H, spec.levels, spec.slice_rule)
    tensors = {"model.embed_tokens.weight": torch.randn(100, 64, generator=g),
               "model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}
    source = {"model": "tiny", "model_sha256": "0" * 64, "calibration": "valid.txt", "calibration_tokens": 4096,
              "seed": seed}
    return dict(layers=layers, tensors=tensors, spec=spec, sensitivity=sens, source=source,
                extra_files={"config.json": b'{"model_type": "llama"}\n'})


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", **make_parts(), max_shard_bytes=4000)


def test_round_trip_bit_exact(ckpt_dir):
    parts = make_parts()
    ck = load_checkpoint(ckpt_dir)
    assert ck.spec == parts["spec"] and ck.source == parts["source"] and ck.sensitivity == parts["sensitivity"]
    assert ck.layer_names == list(parts["layers"])
    assert len(list(ckpt_dir.glob("model-*-of-*.safetensors"))) > 1
    for name, res in parts["layers"].items():
        got = ck.layers[name]
        for part in ("qweight", "scales", "zeros", "perm"):
            assert torch.equal(getattr(got, part), getattr(res, part)) and getattr(got, part).dtype == getattr(
                res, part).dtype
        for r in (8, 3):
            assert torch.equal(ck.dequant(name, r), res.dequant(r, "round"))
    for name, t in parts["tensors"].items():
        assert torch.equal(ck.tensors[name], t) and ck.tensors[name].dtype == t.dtype
    assert (ckpt_dir / "config.json").read_bytes() == parts["extra_files"]["config.json"]
    assert load_checkpoint(ckpt_dir).hash == ck.hash and len(ck.hash) == 64
    with pytest.raises(ValueError, match="layer 'nope' is not in checkpoint"):
        ck.dequant("nope", 4)


def test_same_inputs_identical_bytes(tmp_path):
    a = save_checkpoint(tmp_path / "a", **make_parts(seed=3), max_shard_bytes=4000)
    b = save_checkpoint(tmp_path / "b", **make_parts(seed=3), max_shard_bytes=4000)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and CONFIG_NAME in files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = save_checkpoint(tmp_path / "c", **make_parts(seed=4), max_shard_bytes=4000)
    assert load_checkpoint(c).hash != load_checkpoint(a).hash


def test_config_records_the_recipe(ckpt_dir):
    cfg = json.loads((ckpt_dir / CONFIG_NAME).read_text())
    assert cfg["format_version"] == 2 and cfg["slice_rule"] == "round" and cfg["method"] == "matgptq"
    assert cfg["grid"] == {"parent_bits": 8, "sym": False, "group_size": 32, "implicit_zero": None}
    assert cfg["trained_bits"] == [8, 4, 3] and cfg["lambdas"] == {"8": 1.0, "4": 1.0, "3": 1.0}
    assert cfg["act_order"] is True and all(layer["perm"] for layer in cfg["layers"])
    assert cfg["source"]["calibration_tokens"] == 4096 and all(len(s["sha256"]) == 64 for s in cfg["shards"])


def test_overwrite_existing_checkpoint_but_not_other_dirs(tmp_path, ckpt_dir):
    save_checkpoint(ckpt_dir, **make_parts(seed=1))
    assert load_checkpoint(ckpt_dir).source["seed"] == 1
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a matq checkpoint"):
        save_checkpoint(other, **make_parts())
    assert (other / "notes.txt").read_text() == "keep me"


def _edit_config(d: Path, fn) -> None:
    cfg = json.loads((d / CONFIG_NAME).read_text())
    fn(cfg)
    (d / CONFIG_NAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,exc,match", [
    (lambda c: c.update(format_version=3), ValueError, "unknown format_version 3; this build reads versions 1, 2"),
    (lambda c: c["layers"][0].update(slice_scales=[4]), ValueError, "missing tensor 'model.layers.0.mlp.up_proj.scales_r4'"),
    (lambda c: c.update(slice_rule="truncate"), ValueError, "unknown slice_rule 'truncate'"),
    (lambda c: c["quant"].update(slice_rule="midpoint"), ValueError, "disagrees with the quant spec"),
    (lambda c: c["quant"].update(bits=12), ValueError, "invalid quant spec"),
    (lambda c: c["layers"][0].update(shape=[48, 32]), ValueError, "config says"),
    (lambda c: c["layers"][0].update(perm=False), ValueError, "unexpected tensor"),
    (lambda c: c["tensors"].append({"name": "lm_head.weight", "shape": [1], "dtype": "float32"}), ValueError,
     "tensor 'lm_head.weight' is missing"),
    (lambda c: c["tensors"][1].update(dtype="float32"), ValueError, "config says float32"),
    (lambda c: c["shards"][0].update(sha256="0" * 64), ValueError, "sha256 of model-00001"),
    (lambda c: c.pop("shards"), ValueError, "missing keys"),
    (lambda c: c["source"].update(model="other"), ValueError, "modified after writing"),
])
def test_inconsistent_config_refused(ckpt_dir, edit, exc, match):
    _edit_config(ckpt_dir, edit)
    with pytest.raises(exc, match=match):
        load_checkpoint(ckpt_dir)


def test_refitted_slice_scales_round_trip(tmp_path):
    spec = QuantSpec(group_size=32, feedback="per-slice", refit=(8, 4, 3))
    parts = make_parts(seed=2, spec=spec)
    d = save_checkpoint(tmp_path / "ck", **parts)
    ck = load_checkpoint(d)
    assert ck.config["format_version"] == 2 and ck.spec.refit == (8, 4, 3) and ck.spec.feedback == "per-slice"
    for name, res in parts["layers"].items():
        got = ck.layers[name]
        assert sorted(got.slice_scales) == [3, 4, 8]
        for r in (8, 4, 3):
            assert torch.equal(got.slice_scales[r], res.slice_scales[r]) and got.slice_scales[r].dtype == torch.float16
            assert torch.equal(ck.dequant(name, r), res.dequant(r))
            assert not torch.equal(ck.dequant(name, r), res.dequant(r, refit=False))  # the refit is applied
        assert torch.equal(ck.dequant(name, 6), res.dequant(6, refit=False))  # no refit stored: parent scales


def test_format_version_1_still_loads(tmp_path):
    """A version-1 checkpoint (no slice_scales records, written before the refit existed) loads unchanged."""
    parts = make_parts(seed=3, spec=QuantSpec(group_size=32))
    d = save_checkpoint(tmp_path / "ck", **parts)

    def to_v1(c):
        c["format_version"] = 1
        for rec in c["layers"]:
            del rec["slice_scales"]
        for key in ("feedback", "refit"):
            del c["quant"][key]
    _edit_config(d, to_v1)
    _rehash(d)
    ck = load_checkpoint(d)
    assert ck.config["format_version"] == 1 and ck.spec == parts["spec"]
    for name, res in parts["layers"].items():
        assert ck.layers[name].slice_scales == {} and torch.equal(ck.dequant(name, 4), res.dequant(4))


def test_unrecorded_slice_scales_refused(tmp_path):
    spec = QuantSpec(group_size=32, refit=(4,))
    d = save_checkpoint(tmp_path / "ck", **make_parts(seed=4, spec=spec))
    _edit_config(d, lambda c: [rec.update(slice_scales=[]) for rec in c["layers"]])
    _rehash(d)
    with pytest.raises(ValueError, match="unrecorded tensors.*scales_r4"):
        load_checkpoint(d)


def _rehash(d: Path) -> None:
    """Re-record the config hash after an edit (as a writer of that config would have)."""
    from matq_compile.ckpt import INDEX_NAME, config_hash

    index = json.loads((d / INDEX_NAME).read_text())
    index["metadata"]["matq_hash"] = config_hash(json.loads((d / CONFIG_NAME).read_text()))
    (d / INDEX_NAME).write_text(json.dumps(index))


def test_layer_missing_tensor_refused(tmp_path):
    spec = QuantSpec(group_size=32)
    d = save_checkpoint(tmp_path / "ck", **make_parts(spec=spec))
    _edit_config(d, lambda c: c["layers"][1].update(zeros=True))  # sym layers have no stored zeros
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.0.mlp.down_proj.zeros'"):
        load_checkpoint(d)


def test_corrupt_truncated_and_missing_files_refused(ckpt_dir):
    shard = sorted(ckpt_dir.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or modified"):
        load_checkpoint(ckpt_dir)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(ckpt_dir)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard.name} is missing"):
        load_checkpoint(ckpt_dir)


def test_sidecar_damage_refused(ckpt_dir):
    (ckpt_dir / "sensitivity.json").write_text("{}")
    with pytest.raises(ValueError, match="sha256 of sensitivity.json"):
        load_checkpoint(ckpt_dir)
    (ckpt_dir / CONFIG_NAME).write_text('{"format_version": 1, "quant": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(ckpt_dir)
    (ckpt_dir / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="matq_config.json is missing"):
        load_checkpoint(ckpt_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(ckpt_dir.parent / "nowhere")


@pytest.mark.parametrize("change,exc,match", [
    (lambda p: p["sensitivity"].pop("model.layers.0.mlp.up_proj"), ValueError, "sensitivity table lacks"),
    (lambda p: p["source"].update(bad=float("nan")), ValueError, "not JSON-safe"),
    (lambda p: p["tensors"].update({"model.layers.0.mlp.up_proj.qweight": torch.zeros(1)}), ValueError, "collides"),
    (lambda p: p["extra_files"].update({"../x": b""}), ValueError, "not a plain"),
    (lambda p: p["extra_files"].update({"tok.json": Path("/nonexistent/tok.json")}), FileNotFoundError, "does not"),
])
def test_bad_save_inputs_leave_nothing(tmp_path, change, exc, match):
    parts = make_parts()
    change(parts)
    with pytest.raises(exc, match=match):
        save_checkpoint(tmp_path / "out", **parts)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary directory

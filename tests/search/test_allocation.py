"""Plan files: round trips, the text form, and refusal of plans for other layers or checkpoints."""
from __future__ import annotations

import json

import pytest

from matq_compile.search.allocation import Plan, load_plan, parse_plan_text, plan_text, save_plan
from matq_compile.search.budget import Budget

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
HASH = "ab" * 32


def make_plan(**kw) -> Plan:
    base = dict(layers={NAMES[0]: 3, NAMES[1]: 8}, checkpoint_hash=HASH, levels=(2, 3, 4, 6, 8), solver="milp",
                budgets=(Budget("latency", 1.2e-3),), predicted={"latency_s": 1.1e-3, "avg_bits": 5.5},
                target="llvm-host", seed=0, meta={"m_bucket": 1})
    return Plan(**{**base, **kw})


def test_round_trip(tmp_path):
    plan = make_plan()
    json_path, text_path = save_plan(tmp_path / "allocation.json", plan)
    assert load_plan(json_path, NAMES, HASH) == plan
    assert parse_plan_text(text_path.read_text()) == dict(plan.layers)
    assert text_path.read_text() == f"{NAMES[0]}: 3\n{NAMES[1]}: 8\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allocation.json", "allocation.txt"]  # no temp files
    # same plan -> same bytes
    save_plan(tmp_path / "again.json", plan)
    assert (tmp_path / "again.json").read_bytes() == json_path.read_bytes()


def test_refuses_unknown_layers(tmp_path):
    path, _ = save_plan(tmp_path / "a.json", make_plan(layers={NAMES[0]: 3, NAMES[1]: 8, "model.ghost": 4}))
    with pytest.raises(ValueError, match="does not have.*model.ghost"):
        load_plan(path, NAMES, HASH)


def test_refuses_missing_layers(tmp_path):
    path, _ = save_plan(tmp_path / "a.json", make_plan(layers={NAMES[0]: 3}))
    with pytest.raises(ValueError, match="lacks bits.*down_proj"):
        load_plan(path, NAMES, HASH)


def test_refuses_other_checkpoint(tmp_path):
    path, _ = save_plan(tmp_path / "a.json", make_plan())
    with pytest.raises(ValueError, match="made for checkpoint abab"):
        load_plan(path, NAMES, "cd" * 32)


def test_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_plan(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON plan"):
        load_plan(bad)
    obj = make_plan().to_json()
    bad.write_text(json.dumps({**obj, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_plan(bad)
    bad.write_text(json.dumps({k: v for k, v in obj.items() if k != "checkpoint_hash"}))
    with pytest.raises(ValueError, match="malformed"):
        load_plan(bad)
    with pytest.raises(ValueError, match="both"):
        load_plan(save_plan(tmp_path / "ok.json", make_plan())[0], NAMES)


@pytest.mark.parametrize("layers", [{NAMES[0]: 9}, {NAMES[0]: 1}, {NAMES[0]: 5}, {NAMES[0]: True}, {}])
def test_plan_rejects_bad_bits(layers):
    with pytest.raises(ValueError):
        make_plan(layers=layers)


def test_text_form_parse_errors():
    assert parse_plan_text("# comment\n\na.b: 4  # trailing\n") == {"a.b": 4}
    with pytest.raises(ValueError, match="expected 'layer: bits'"):
        parse_plan_text("a.b 4\n")
    with pytest.raises(ValueError, match="twice"):
        parse_plan_text("a: 4\na: 3\n")
    assert parse_plan_text(plan_text({"x.y": 2, "z": 8})) == {"x.y": 2, "z": 8}

"""Switchable builds (`matq compile --switchable`): one build, every width chosen at run time. Its logits equal the
dedicated build's of the same slice or plan bit for bit; a switch mid-generation continues exactly as the dedicated
builds would from that cache; plans and widths the build cannot serve are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import IDS, compile_tiny, make_checkpoint, matq, write_plan

WIDTHS = (2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="module")
def ckpt(tiny_llama_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("ckpt") / "rtn")


@pytest.fixture(scope="module")
def switch(ckpt, tmp_path_factory) -> Path:
    return compile_tiny(ckpt, tmp_path_factory.mktemp("sw") / "switch", switch_widths=WIDTHS)


@pytest.fixture(scope="module")
def dedicated(ckpt, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("dedicated")
    return {r: compile_tiny(ckpt, root / f"int{r}", bits=r) for r in WIDTHS}


def _load(build: Path):
    from matq_compile import runtime

    return runtime.load(build)


def _sibling_plan(ckpt: Path) -> dict[str, int]:
    """A mixed plan that keeps each fused set (q/k/v, gate/up) at one width, as a switchable build runs them."""
    from matq_compile.ckpt import load_checkpoint
    from matq_compile.siblings import sibling_key

    names = load_checkpoint(ckpt).layer_names
    widths = {}
    return {n: widths.setdefault(sibling_key(n), WIDTHS[len(widths) % len(WIDTHS)]) for n in names}


def test_every_width_equals_its_dedicated_build_bit_for_bit(switch, dedicated):
    m = _load(switch)
    assert m.widths == list(WIDTHS)
    for r, build in dedicated.items():
        m.set_bits(r)
        m.reset()
        ref = _load(build).score(IDS)
        np.testing.assert_array_equal(m.score(IDS), ref, err_msg=f"r={r}")


def test_a_mixed_plan_equals_its_dedicated_build(switch, ckpt, tmp_path):
    plan, layers = write_plan(tmp_path / "plan.json", ckpt, _sibling_plan(ckpt))
    assert len(set(layers.values())) > 2
    ref = _load(compile_tiny(ckpt, tmp_path / "planned", plan=plan)).score(IDS)
    m = _load(switch)
    m.set_plan(plan)
    np.testing.assert_array_equal(m.score(IDS), ref)


def test_switching_mid_generation_continues_like_the_dedicated_builds(switch, dedicated):
    """Prefill and 3 steps at r=8, 3 steps at r=3, 2 at r=6, on one KV cache; the reference hands the dedicated
    builds' cache on at each switch."""
    schedule = [(8, 3), (3, 3), (6, 2)]
    m = _load(switch)
    m.set_bits(8)
    refs = {r: _load(dedicated[r]) for r, _ in schedule}
    ref = refs[8]
    got, want = [int(np.argmax(m.prefill(IDS)))], [int(np.argmax(ref.prefill(IDS)))]
    for r, steps in schedule:
        m.set_bits(r)
        nxt = refs[r]
        if nxt is not ref:  # the dedicated build continues from the other one's cache
            nxt.kt.copyfrom(ref.kt.numpy())
            nxt.vc.copyfrom(ref.vc.numpy())
            nxt.pos, ref = ref.pos, nxt
        for _ in range(steps):
            a, b = m.decode(got[-1]), ref.decode(want[-1])
            np.testing.assert_array_equal(a, b)
            got.append(int(np.argmax(a)))
            want.append(int(np.argmax(b)))
    assert got == want


def _host_has_byte_dot() -> bool:
    from matq_compile import targets
    from matq_compile.lower.int8_intrin import target_isa

    return target_isa(targets.load("host").to_tvm()) is not None


@pytest.mark.skipif(not _host_has_byte_dot(), reason="this CPU has no AVX2/VNNI byte dot product")
def test_int8_activation_build_equals_the_dedicated_int8_builds(ckpt, tmp_path):
    """--act int8: the nested planes decode into the dedicated int8 kernels' lane order, so every width and a mixed
    plan give the dedicated int8 builds' logits bit for bit, and a switch mid-generation continues exactly. Where
    the dedicated build runs the tile kernels instead (int8_intrin.tiled: r = 2, 3, 4, 8 on AVX512-VNNI), a layer's
    integer sums are the same and its float epilogue adds in another order; a last-bit difference that moves an
    activation across a rounding tie of the next layer's int8 quantization changes that code by one, so the
    logits agree to about 1e-3 of their range there (2e-2 asked)."""
    from matq_compile import layout, targets
    from matq_compile.lower import int8_intrin

    widths = (2, 3, 6, 8)  # r = 8 decodes 2-bit planes bit by bit (no short decode in its lane order)
    m = _load(compile_tiny(ckpt, tmp_path / "sw", switch_widths=widths, act="int8"))
    assert json.loads((tmp_path / "sw" / "manifest.json").read_text())["act"] == "int8"
    refs = {r: _load(compile_tiny(ckpt, tmp_path / f"int{r}", bits=r, act="int8")) for r in widths}
    isa = int8_intrin.check_target(targets.load("host"))

    def same(got, want, plan_widths, msg=""):  # a 16-row slice of each width: does this host tile it?
        if any(int8_intrin.tiled(isa, layout.KernelKey(16, 64, r, 32)) for r in plan_widths):
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max(), err_msg=msg)
        else:
            np.testing.assert_array_equal(got, want, err_msg=msg)

    for r in widths:
        m.set_bits(r)
        m.reset()
        same(m.score(IDS), refs[r].score(IDS), [r], f"r={r}")
    mixed = {n: widths[WIDTHS.index(b) % len(widths)] for n, b in _sibling_plan(ckpt).items()}  # siblings alike
    plan, _ = write_plan(tmp_path / "plan.json", ckpt, mixed)
    m.set_plan(plan)
    m.reset()
    ref = _load(compile_tiny(ckpt, tmp_path / "planned", plan=plan, act="int8"))
    same(m.score(IDS), ref.score(IDS), set(mixed.values()))


def test_the_build_stores_the_planes_once(switch, dedicated):
    from safetensors.numpy import load_file

    sw = load_file(str(switch / "weights.safetensors"))
    planes = {k: v for k, v in sw.items() if k.endswith(".P")}
    assert planes and all(v.dtype == np.uint32 for v in planes.values())
    d8 = load_file(str(dedicated[8] / "weights.safetensors"))
    assert sum(v.nbytes for v in planes.values()) == sum(v.nbytes for k, v in d8.items() if k.endswith(".P"))
    manifest = json.loads((switch / "manifest.json").read_text())
    assert manifest["switch"]["widths"] == list(WIDTHS) and manifest["plan"]["kind"] == "switchable"


def test_widths_and_plans_the_build_cannot_serve_are_refused(ckpt, switch, dedicated, tmp_path):
    m = _load(switch)
    m.set_bits(4)
    with pytest.raises(ValueError, match="serves r in"):
        m.set_bits(1)
    other, _ = write_plan(tmp_path / "other.json", ckpt, _sibling_plan(ckpt), ckpt_hash="0" * 64)
    with pytest.raises(ValueError, match="another|not for this"):
        m.set_plan(other)
    split, _ = write_plan(tmp_path / "split.json", ckpt)  # q, k, v at different widths
    with pytest.raises(ValueError, match="different widths"):
        m.set_plan(split)
    assert m.unit_bits == [4] * len(m.switch["units"])  # a refused choice leaves the last one in force
    with pytest.raises(ValueError, match="--switchable"):
        _load(dedicated[4]).set_bits(4)


def test_a_coarse_plane_split_equals_the_dedicated_builds(ckpt, dedicated, tmp_path):
    """--planes 4,4: widths 2 and 3 read the top plane and drop its low bits, 8 reads both; same logits."""
    m = _load(compile_tiny(ckpt, tmp_path / "coarse", switch_widths=(2, 3, 8), switch_planes=(4, 4)))
    assert json.loads((tmp_path / "coarse" / "manifest.json").read_text())["switch"]["layout"] == "r44"
    for r in (2, 3, 8):
        m.set_bits(r)
        m.reset()
        np.testing.assert_array_equal(m.score(IDS), _load(dedicated[r]).score(IDS), err_msg=f"r={r}")
    with pytest.raises(ValueError, match="store 4 bits"):
        compile_tiny(ckpt, tmp_path / "bad", switch_widths=(2, 8), switch_planes=(2, 2))
    assert not (tmp_path / "bad").exists()


def test_a_build_of_fewer_widths_refuses_the_others(ckpt, tmp_path):
    m = _load(compile_tiny(ckpt, tmp_path / "sw24", switch_widths=(2, 4)))
    m.set_bits(2)
    assert m.score(IDS).shape == (len(IDS), m.vocab)
    with pytest.raises(ValueError, match=r"serves r in \[2, 4\]"):
        m.set_bits(3)


def test_switchable_needs_no_plan_and_a_cpu_target(ckpt, tmp_path):
    with pytest.raises(ValueError, match="no plan"):
        compile_tiny(ckpt, tmp_path / "a", switch_widths=WIDTHS, bits=4)
    with pytest.raises(ValueError, match="GPU target"):
        compile_tiny(ckpt, tmp_path / "b", switch_widths=WIDTHS, target="cuda-sm80")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_compiles_a_switchable_build_and_runs_it_at_any_width(tiny_tok_ckpt, tmp_path):
    from matq_compile import runtime

    out = tmp_path / "b"
    res = matq("compile", "--checkpoint", str(tiny_tok_ckpt), "--switchable", "--bits", "3,8", "--out", str(out),
               "--allow-untuned", "--max-seq-len", "64")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["switch"]["widths"] == [3, 8]
    tokens = {}
    for r in (3, 8):
        res = matq("run", str(out), "--prompt", "hello there", "--bits", str(r), "--max-new-tokens", "5",
                   "--ignore-eos", "--json", str(tmp_path / f"r{r}.json"), check_no_torch=True)
        assert res.returncode == 0, res.stderr
        tokens[r] = json.loads((tmp_path / f"r{r}.json").read_text())["tokens"]
        m = runtime.load(out)
        m.set_bits(r)
        ids = runtime.load_tokenizer(out).encode("hello there").ids
        assert m.generate(ids, 5, stop_at_eos=False).tokens == tokens[r]
    bad = matq("run", str(out), "--prompt", "x", "--bits", "5")
    assert bad.returncode == 2 and "serves r in [3, 8]" in bad.stderr
    bad = matq("compile", "--checkpoint", str(tiny_tok_ckpt), "--bits", "3,8", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "--switchable" in bad.stderr and not (tmp_path / "c").exists()
    bad = matq("compile", "--checkpoint", str(tiny_tok_ckpt), "--bits", "3", "--planes", "4,4", "--out",
               str(tmp_path / "c"))
    assert bad.returncode == 2 and "add --switchable" in bad.stderr and not (tmp_path / "c").exists()
    bad = matq("compile", "--checkpoint", str(tiny_tok_ckpt), "--switchable", "--planes", "4,3", "--out",
               str(tmp_path / "c"))
    assert bad.returncode == 2 and "1, 2, 4 or 8" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

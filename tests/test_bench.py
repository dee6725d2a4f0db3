"""bench.py: latency table round trip and refusals; positive cold-cache times on llvm."""
from __future__ import annotations

from pathlib import Path

import pytest

from matq_compile import layout, targets
from matq_compile.search.latency import LatencyTable

pytest.importorskip("tvm")
from matq_compile import bench, tune  # noqa: E402


@pytest.fixture(scope="module")
def host():
    return targets.load("host")


def test_measure_save_load_and_refusals(tmp_path, host):
    db = tmp_path / host.name
    tune.check_database(db, host, create=True)  # empty database: every kernel takes the default schedule
    keys = [layout.KernelKey(64, 128, b, 64, 1) for b in (2, 4)]
    with pytest.raises(ValueError, match="no tuning records"):
        bench.measure(keys, host, db, repeat=3)
    table = bench.measure(keys, host, db, repeat=5, fallback=True)
    assert list(table.entries) == keys and table.device == bench.cpu_model()  # timed here: this CPU
    assert all(0 < table.stats[k]["min_s"] <= t < 1 and table.stats[k]["gbps"] > 0 for k, t in table.entries.items())
    path = tmp_path / "latency.json"
    table.save(path)
    assert bench.load_table(path, host, db) == table
    assert table.latency(keys[0]) == table.entries[keys[0]]
    with pytest.raises(KeyError, match="not in the latency table"):
        table.latency(keys[0].with_bits(3))
    with pytest.raises(ValueError, match="measured on target"):
        bench.load_table(path, targets.load("llvm-x86-avx2"))
    (db / "database_workload.json").write_text("[]\n")  # the database changed after measuring
    with pytest.raises(ValueError, match="another tuning database"):
        bench.load_table(path, host, db)


def test_measure_compiles_each_kernel_once_across_rounds(tmp_path, host, monkeypatch):
    """With a `built` dict kept across calls (kernels_bench's rounds), each kernel is compiled once and re-timed;
    a kernel scheduled from another database is compiled anew."""
    db = tmp_path / host.name
    tune.check_database(db, host, create=True)
    compiled = []
    real = bench.build_kernel
    monkeypatch.setattr(bench, "build_kernel", lambda key, *a, **kw: compiled.append(key) or real(key, *a, **kw))
    keys, built = [layout.KernelKey(64, 128, 4, 64, 1)], {}
    tables = [bench.measure(keys, host, db, repeat=3, fallback=True, built=built) for _ in range(2)]
    assert compiled == keys and all(t.entries[keys[0]] > 0 for t in tables)
    other = tmp_path / "other" / host.name
    tune.check_database(other, host, create=True)
    bench.measure(keys, host, other, repeat=3, fallback=True, built=built)
    assert compiled == keys * 2


def test_traffic_scales_with_bits():
    sizes = [bench.traffic_bytes(layout.KernelKey(4096, 4096, b, 64, 1), 1) for b in range(2, 9)]
    steps = {b - a for a, b in zip(sizes, sizes[1:])}
    assert steps == {4096 * 4096 // 8}  # exactly one more bit per weight per step of r


def test_int8_tables_time_the_int8_kernels_in_a_file_of_their_own(tmp_path, host):
    """act int8: the kernel an int8 build calls (its int8 form where one exists, else the float kernel), and a
    table path apart from the float table's (same keys, other kernels)."""
    from matq_compile.lower.int8_intrin import target_isa

    if target_isa(host.to_tvm()) is None:
        pytest.skip("this CPU has no byte dot product")
    assert bench.table_path(tmp_path, 1, "int8") != bench.table_path(tmp_path, 1) == tmp_path / "latency_m1.json"
    int8 = bench.build_kernel(layout.KernelKey(64, 128, 4, 64, 1), host, tmp_path / "no-db", act="int8")
    assert "vpmaddubsw" in int8.mod.inspect_source("asm") or "vpdpbusd" in int8.mod.inspect_source("asm")
    f16 = layout.KernelKey(64, 128, 4, 64, 1, "float16")  # no int8 form: the build keeps the float kernel
    kept = bench.build_kernel(f16, host, tmp_path / "no-db", fallback=True, act="int8")
    assert "vpmaddubsw" not in kept.mod.inspect_source("asm")


def test_int8_tables_are_tied_to_the_int8_kernel_source(tmp_path, host, monkeypatch):
    """The int8 kernels take no tuning records, so their table's identity includes their source: a table of the
    old kernels is refused once the source changes, while the float table's identity stays the database's."""
    import shutil

    from matq_compile.lower import int8_kernels

    db = tmp_path / host.name
    tune.check_database(db, host, create=True)
    assert bench.kernels_hash(db) == tune.database_hash(db) != bench.kernels_hash(db, "int8")
    src = tmp_path / "pkg"
    for name in bench.INT8_SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(int8_kernels.__file__).parent.parent / name, src / name)
    monkeypatch.setattr(int8_kernels, "__file__", str(src / "lower" / "int8_kernels.py"))
    key = layout.KernelKey(64, 128, 4, 64, 1)
    path = tmp_path / "latency_m1_int8.json"
    LatencyTable(host.name, "tvm", bench.kernels_hash(db, "int8"), {key: 1e-5}).save(path)
    assert bench.load_table(path, host, db, "int8").entries == {key: 1e-5}
    before = bench.kernels_hash(db, "int8")
    with open(src / "tiles.py", "a") as f:  # the tile kernels' operand tables are part of the kernels too
        f.write("# changed\n")
    assert bench.kernels_hash(db, "int8") != before
    with open(src / "lower" / "int8_decode.py", "a") as f:
        f.write("# changed\n")
    with pytest.raises(ValueError, match="older int8 kernel source"):
        bench.load_table(path, host, db, "int8")


@pytest.mark.parametrize("text,want", [("32768K", 32 << 20), ("480M\n", 480 << 20), ("1G", 1 << 30),
                                       ("4096", 4096), ("", None), ("K", None), ("12Q", None), ("1.5M", None)])
def test_cache_sizes_read_as_sysfs_writes_them(text, want):
    """The L3 size the benchmarks rotate their anchors' weights beyond (3x it), as sysfs spells it."""
    assert bench.cache_size_bytes(text) == want


def test_chain_calls_every_kernel_on_its_own_weights(tmp_path, host):
    """chain_executable: keys of two widths and two K, each on the weights chain_args gave it; every output
    matches numpy's x @ dequant(P, S, Z).T (the layout's reference), so no call reuses another's weights."""
    import numpy as np

    from matq_compile._tvm import tensor, tvm
    from tvm import relax

    db = tmp_path / host.name
    tune.check_database(db, host, create=True)
    a, b = layout.KernelKey(64, 128, 4, 64, 1), layout.KernelKey(32, 64, 2, 32, 1)
    keys = [a, b, a]
    args = bench.chain_args(keys, 1, seed=3)
    vm = relax.VirtualMachine(bench.chain_executable(keys, host, db, 1, fallback=True), tvm.cpu())
    outs = vm["chain"](*(tensor(a, tvm.cpu()) for a in args))
    xs = dict(zip([(64, "float32"), (128, "float32")], args[:2]))
    for i, key in enumerate(keys):
        P, S, Z = args[2 + 3 * i: 5 + 3 * i]
        w = layout.dequant({"P": P, "S": S, "Z": Z}, key.bits, key.K, key.group)
        ref = xs[key.K, "float32"].astype(np.float64) @ w.T.astype(np.float64)
        np.testing.assert_allclose(outs[i].numpy(), ref, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(args[2], args[8])  # the two 64x128 calls hold different codes


def test_chain_tables_record_their_length_and_never_mix(tmp_path, host):
    """measure(chain=3): per-kernel seconds from chains of 3, recorded in the table and read back; a table keeps
    its chain for the kernels it lacks (cached_latency), and tables of two chain lengths do not merge. The int8
    kernels: they need no tuning records, so cached_latency can time them from an empty database."""
    from matq_compile.io_utils import FormatError
    from matq_compile.lower.int8_intrin import target_isa
    from matq_compile.search.latency import load_latency_table

    if target_isa(host.to_tvm()) is None:
        pytest.skip("this CPU has no byte dot product")
    db = tmp_path / host.name
    tune.check_database(db, host, create=True)
    keys = [layout.KernelKey(64, 128, b, 64, 1) for b in (2, 4, 8)]
    table = bench.measure(keys[:1], host, db, repeat=3, act="int8", chain=3)
    assert table.chain == 3 and 0 < table.entries[keys[0]] < 1
    path = tmp_path / "latency.json"
    table.save(path)
    assert bench.load_table(path, host, db, "int8") == table
    with pytest.raises(ValueError, match="chains of 1 into a table timed in chains of 3"):
        table.merged(bench.measure(keys[1:2], host, db, repeat=3, act="int8"))
    grown = bench.cached_latency(keys, host, db, path, act="int8")
    assert grown.chain == 3 and set(grown.entries) == set(keys)
    assert bench.load_table(path, host, db, "int8") == grown  # saved, still one protocol
    (tmp_path / "bad.json").write_text(path.read_text().replace('"chain": 3', '"chain": 0'))
    with pytest.raises(FormatError, match="chain must be a positive integer"):
        load_latency_table(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="chain must be at least 1"):
        bench.measure(keys, host, db, chain=0)

"""DumpIR: a no-op pass that writes the module's TVMScript between pipeline phases (debugging aid)."""
from __future__ import annotations

from pathlib import Path

from matq_compile._tvm import tvm


def dump_ir(dump_dir: str | Path, index: int, phase: str) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=f"DumpIR[{phase}]")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        path = Path(dump_dir) / f"{index:02d}-{phase}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mod.script(show_meta=False))
        return mod

    return _pass

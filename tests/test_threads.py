"""_threads: TVM's pool gets every usable core unless the user chose a size."""
from __future__ import annotations

import os

from matq_compile import _threads


def test_default_is_every_usable_core(monkeypatch):
    monkeypatch.delenv(_threads.ENV, raising=False)
    assert _threads.configure_tvm_threads() == _threads.usable_cores() == len(os.sched_getaffinity(0))
    assert os.environ[_threads.ENV] == str(_threads.usable_cores())


def test_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv(_threads.ENV, "1")
    assert _threads.configure_tvm_threads() == 1 and os.environ[_threads.ENV] == "1"

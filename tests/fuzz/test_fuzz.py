"""The fuzz harnesses of tests/fuzz/: their seeds pass, their checks can fail, and a few seconds
of fuzzing each find nothing (so a crash the fuzzer can reach fails CI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from fuzz import fuzz_core, fuzz_frames

from relay import _fastpath_py
from relay.store.memory import MemoryStore

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
HARNESSES: dict[str, ModuleType] = {"frames": fuzz_frames, "core": fuzz_core}


@pytest.mark.parametrize("name", HARNESSES)
def test_the_committed_seeds_are_the_harness_seeds(name: str) -> None:
    """Every seed the harness writes is committed as written (the corpus may hold more: the
    regression seeds of fixed failures)."""
    committed = {p.name: p.read_bytes() for p in (CORPUS / name).iterdir()}
    for file_name, data in HARNESSES[name].seeds().items():
        assert committed.get(file_name) == data, (
            f"{CORPUS / name / file_name} is missing or stale: python tests/fuzz/run.py "
            "--write-seeds"
        )


@pytest.mark.parametrize(
    "path",
    sorted((CORPUS / "frames").iterdir()) + sorted((CORPUS / "core").iterdir()),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_committed_input_passes(path: Path) -> None:
    HARNESSES[path.parent.name].check(path.read_bytes())


def test_the_frames_check_catches_a_parser_that_disagrees() -> None:
    class Lenient(_fastpath_py.FrameParser):
        def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
            events = super().feed(data)
            if self.close_code == 1002:
                self.close_reason = "something else"
            return events

    twin = SimpleNamespace(FrameParser=Lenient, OP_CLOSE=_fastpath_py.OP_CLOSE)
    seed = fuzz_frames.seeds()["rsv"]
    fuzz_frames.check(seed)
    with pytest.raises(AssertionError, match="compiled"):
        fuzz_frames.check(seed, pure=twin)


def test_the_frames_check_catches_a_parser_that_keeps_the_callers_buffer() -> None:
    class Deferring(_fastpath_py.FrameParser):
        """Parses a mutable buffer only at the next feed, by reference (the shell has reused
        that buffer by then); the same pieces in the same order otherwise."""

        pending: bytearray | memoryview | None = None

        def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
            events = []
            if self.pending is not None:
                events += super().feed(self.pending)
                self.pending = None
            if isinstance(data, bytes):
                return events + super().feed(data)
            self.pending = data
            return events

    twin = SimpleNamespace(FrameParser=Deferring, OP_CLOSE=_fastpath_py.OP_CLOSE)
    with pytest.raises(AssertionError, match="chunked"):
        fuzz_frames.check(fuzz_frames.seeds()["session-cut"], pure=twin)


def test_the_core_check_catches_an_internal_error() -> None:
    class Broken(MemoryStore):
        async def conversations(self, user_id: str, *, limit: int = 100) -> Any:
            raise RuntimeError("boom")

    seed = fuzz_core.seeds()["chat"]
    fuzz_core.check(seed)
    with pytest.raises(fuzz_core.Failure, match="internal"):
        fuzz_core.check(seed, store_factory=Broken)


def test_the_core_check_catches_a_logged_traceback() -> None:
    class Broken(MemoryStore):
        async def mark_delivered_many(self, marks: Any) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(fuzz_core.Failure, match="logged ERROR"):
        fuzz_core.check(fuzz_core.seeds()["chat"], store_factory=Broken)


@pytest.mark.slow
@pytest.mark.parametrize("name", HARNESSES)
def test_a_few_seconds_of_fuzzing_find_nothing(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--seconds", "4", "--work", str(tmp_path), name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    runs = re.search(rf"fuzz {name}: ([\d,]+) executions", proc.stdout)
    assert runs is not None, proc.stdout
    assert int(runs.group(1).replace(",", "")) > len(list((CORPUS / name).iterdir()))

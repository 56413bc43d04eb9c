"""Where a model stage's start-up goes, printed once, in one line, when its first work begins:

    start-up: imports 4.1 s, cuda 1.2 s, weight check 2.0 s, model load 1.5 s (8.8 s to first work)

Every stage that loads a model is a process of its own and pays this before it does anything: on an H100 about 12 s
of each, eight times per `dvc repro`. The phases are what the main thread spent; `imports` is what is left of the
total once the others are taken out (the interpreter, the imports, reading params and rows: the last two take
milliseconds). Torch-free, so a stage can start its clock before the heavy imports.

Two phases need not wait for the others: hashing the weights (hashlib and file reads release the GIL) and starting
CUDA (the driver's work) run in threads beside the imports and the load, started as soon as the stage knows its model
directories; the main thread waits for each only where it needs the result, and the model is returned, and so used,
only once its weights are verified. The line then says how long each thread ran beside the rest: `weight check 0.0 s
(2.0 s alongside)` is 2 s of hashing the main thread never waited for."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .io import verify_weight_digests


def _seconds_since_process_start() -> float:
    """Linux: the process's start (clock ticks since boot, field 22 of /proc/self/stat) against the uptime, to 10 ms;
    elsewhere 0, and the clock starts when this module is imported."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return max(float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


_STARTED = time.perf_counter() - _seconds_since_process_start()
# Main-thread seconds by phase, in the order they first ran.
_spent: dict[str, float] = {}
# Seconds of the phases running inside the innermost open one, which it does not count as its own.
_inner: list[float] = []
_state = {"reporting": False, "reported": False}
# The line's order: as a stage meets them.
_ORDER = ["imports", "cuda", "weight check", "model load", "set-up"]


def _place(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the main thread's time in the block as `name`'s; a phase inside another counts for itself alone (the
    imports a model load does on its first call are imports). Phase "imports" is taken out of its enclosing phase and
    otherwise ignored: imports are the remainder."""
    start = time.perf_counter()
    _inner.append(0.0)
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _spent[name] = _spent.get(name, 0.0) + elapsed - _inner.pop()
        if _inner:
            _inner[-1] += elapsed


class _Alongside(threading.Thread):
    """Work run beside the main thread; wait() returns its result or raises its error there."""

    def __init__(self, name: str, work: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.work, self.result, self.error, self.seconds = work, None, None, None

    def run(self) -> None:
        start = time.perf_counter()
        try:
            self.result = self.work()
        except BaseException as err:  # re-raised in the main thread by wait()
            self.error = err
        finally:
            self.seconds = time.perf_counter() - start

    def wait(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


# Every thread started, by the phase it stands for; weight checks not yet waited for, by resolved directory.
_threads: dict[str, list[_Alongside]] = {}
_pending_checks: dict[Path, _Alongside] = {}


def _start(name: str, work: Callable[[], object]) -> _Alongside:
    thread = _Alongside(name, work)
    _threads.setdefault(name, []).append(thread)
    thread.start()
    return thread


def check_weights_alongside(*directories: str | Path) -> None:
    """Start hashing each model directory's weights in a thread of its own, once per directory until it is waited
    for; a directory without a digest record (not written by a stage, or absent) is nothing to check."""
    for directory in directories:
        key = Path(directory).resolve()
        if key not in _pending_checks:
            _pending_checks[key] = _start("weight check", lambda directory=directory: verify_weight_digests(directory))


def verified_weights(directory: str | Path) -> None:
    """Raise a UserError unless `directory`'s weights are what their stage wrote (io.verify_weight_digests): the
    check started alongside, waited for, then the synchronous one, which hashes only files written since (io keeps
    what this process verified, by file state)."""
    with phase("weight check"):
        pending = _pending_checks.pop(Path(directory).resolve(), None)
        if pending is not None:
            pending.wait()
        verify_weight_digests(directory)


def _cuda_device_index() -> int:
    """The GPU modeling.device() picks: under DDP each rank's LOCAL_RANK."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _create_cuda_context() -> bool:
    """This process's CUDA context on its GPU, which the first model load would otherwise create; False: no GPU."""
    import torch

    if not torch.cuda.is_available():
        return False
    torch.zeros(1, device=torch.device("cuda", _cuda_device_index()))
    return True


_cuda: dict[str, object] = {}


def start_cuda_alongside() -> None:
    """Create the CUDA context in a thread while the stage goes on importing transformers and peft. torch is imported
    here, on the main thread, first: two threads importing it at once would only wait for each other. Only once
    CUDA_VISIBLE_DEVICES is final (distributed.pin_to_one_gpu)."""
    if "thread" not in _cuda:
        import torch  # noqa: F401

        _cuda["thread"] = _start("cuda", _create_cuda_context)


def cuda_ready() -> None:
    """CUDA started (a no-op without a GPU), its wait counted as the cuda phase; started here if the stage did not
    start it alongside."""
    if "gpu" not in _cuda:
        with phase("cuda"):
            thread = _cuda.get("thread")
            _cuda["gpu"] = thread.wait() if thread is not None else _create_cuda_context()


def report_at_first_work() -> None:
    """Called by a stage: this process prints its start-up when first_work() is reached. Library callers (the bench,
    tests) load models many times in one process, where a start-up line would only be noise."""
    _state["reporting"] = True


def startup_line(until: str = "to first work") -> str:
    total = time.perf_counter() - _STARTED
    phases = {name: _spent[name] for name in sorted(_spent, key=_place) if name != "imports"}
    parts = [f"imports {total - sum(phases.values()):.1f} s"]
    for name, seconds in phases.items():
        if name == "cuda" and not _cuda.get("gpu"):
            parts.append("cuda: no GPU")
            continue
        threads = _threads.get(name, [])
        ran = [t.seconds for t in threads if t.seconds is not None]
        alongside = f" ({sum(ran):.1f} s alongside{', still running' if len(ran) < len(threads) else ''})"
        parts.append(f"{name} {seconds:.1f} s{alongside if threads else ''}")
    return f"start-up: {', '.join(parts)} ({total:.1f} s {until})"


# The libraries whose compilation, when their bytecode is missing, dwarfs a stage's start-up.
HEAVY_LIBRARIES = ("torch", "transformers", "peft")


def _can_create(path: Path) -> bool:
    """Whether this process could write `path`: its nearest existing ancestor is writable."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def _source_of(name: str) -> str | None:
    """The file a library's top module runs from: the imported module's, else found without importing it."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def uncompiled_libraries(names: list[str] | tuple[str, ...]) -> list[str]:
    """The libraries whose package has no bytecode where this interpreter reads it (beside the sources, or under
    PYTHONPYCACHEPREFIX) and will not get it from this interpreter: PYTHONDONTWRITEBYTECODE set, or the directory
    read-only. Each of them is compiled again, in memory, by every process that imports it."""
    found = []
    for name in names:
        source = _source_of(name)
        if not source:
            continue
        cached = Path(importlib.util.cache_from_source(source))
        if not cached.exists() and (sys.dont_write_bytecode or not _can_create(cached.parent)):
            found.append(name)
    return found


def uncompiled_hint(names: list[str]) -> str:
    why = "PYTHONDONTWRITEBYTECODE is set" if sys.dont_write_bytecode else "their directory is read-only"
    verb = "has" if len(names) == 1 else "have"
    return (
        f"start-up: {', '.join(names)} {verb} no bytecode here and none is written ({why}), so every stage "
        "compiles them again (seconds each); compile them once: export PYTHONDONTWRITEBYTECODE= "
        "PYTHONPYCACHEPREFIX=$HOME/.cache/pycache"
    )


def first_work(until: str = "to first work") -> None:
    """Print the start-up line, once per process, if the stage asked for it (report_at_first_work), and below it
    how to stop compiling the libraries in each stage when this process had to."""
    if _state["reporting"] and not _state["reported"]:
        _state["reported"] = True
        print(startup_line(until), flush=True)
        uncompiled = uncompiled_libraries([name for name in HEAVY_LIBRARIES if name in sys.modules])
        if uncompiled:
            print(uncompiled_hint(uncompiled), flush=True)

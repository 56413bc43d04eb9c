"""bench/gguf_parts.py: SmolLM2's compressed GGUF in as many parts as the device calls need (bench/gpu_peers.sh),
and put together again on the lent machine from the parts the calls copied there."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gguf_parts import join, part_sizes, split

ROOT = Path(__file__).resolve().parent.parent


def test_part_sizes_fill_the_first_call_beside_the_kit_then_one_call_each():
    assert part_sizes(100, first_room=30, room=50) == [30, 50, 20]
    assert part_sizes(80, first_room=30, room=50) == [30, 50]
    assert part_sizes(20, first_room=30, room=50) == [20]
    with pytest.raises(ValueError, match="no room"):
        part_sizes(100, first_room=0, room=50)  # a kit that alone fills the first call


def _copy_to_machine(folders: list[Path], machine: Path) -> None:
    """What gpu_peers.sh's setup does with each call's folder: its part as part-<letter>, and the count."""
    machine.mkdir(exist_ok=True)
    for folder in folders:
        shutil.copy(folder / "part", machine / f"part-{folder.name[-1]}")
        shutil.copy(folder / "count", machine / "count")


def test_split_parts_join_back_to_the_file_and_a_missing_part_is_named(tmp_path):
    original = os.urandom(3000) + bytes(5000)
    packed = lzma.compress(original)
    folders = split(packed, tmp_path / "peers-smol", first_room=len(packed) // 3, room=len(packed) // 2)
    assert [f.name for f in folders] == ["peers-smol-a", "peers-smol-b", "peers-smol-c"]
    assert sum((f / "part").stat().st_size for f in folders) == len(packed)

    machine = tmp_path / "machine"
    _copy_to_machine(folders[:2], machine)  # the third call has not come yet
    with pytest.raises(SystemExit, match=r"missing in .*: part-c \(carry .bench/peers-smol-c in the next call\)"):
        join(machine)
    _copy_to_machine(folders[2:], machine)
    assert lzma.decompress(join(machine)) == original


def test_the_command_line_splits_and_joins(tmp_path):
    original = os.urandom(2000)
    packed = tmp_path / "model.gguf.xz"
    packed.write_bytes(lzma.compress(original))
    size = packed.stat().st_size
    script = str(ROOT / "bench/gguf_parts.py")
    split_run = subprocess.run(
        [sys.executable, script, "split", str(packed), str(tmp_path / "smol"), str(size - 100), str(size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "call 2 carries" in split_run.stdout
    _copy_to_machine(sorted(tmp_path.glob("smol-?")), tmp_path / "machine")
    subprocess.run([sys.executable, script, "join", str(tmp_path / "machine"), str(tmp_path / "out.gguf")], check=True)
    assert (tmp_path / "out.gguf").read_bytes() == original

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run(
        [sys.executable, script, "join", str(empty), str(tmp_path / "x")], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "no call has carried a GGUF part" in refused.stderr

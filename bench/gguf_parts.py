"""SmolLM2's GGUF in as many parts as the device calls need: a call carries at most 64 MiB with the working tree, and
the first call also carries the peers kit (bench/gpu_peers.sh). Here `split` writes the compressed file's parts to
DIR-a, DIR-b, … (each `part`, with `count`, how many there are); on the lent machine `join` puts the parts copied
into one folder (part-a, part-b, …) together again, or says which are still missing.

    python3 bench/gguf_parts.py split PACKED_FILE .bench/peers-smol FIRST_ROOM ROOM
    python3 bench/gguf_parts.py join /tmp/smol OUT_FILE          # decompresses the joined parts into OUT_FILE
"""

from __future__ import annotations

import lzma
import string
import sys
from pathlib import Path


def part_sizes(total: int, first_room: int, room: int) -> list[int]:
    """Bytes in each part: the first fills what the first call has left beside the kit, each other one a call."""
    if first_room <= 0 or room <= 0:
        raise ValueError(f"no room for a part: {first_room} bytes in the first call, {room} in the others")
    sizes = [min(first_room, total)]
    rest = total - sizes[0]
    while rest > 0:
        sizes.append(min(room, rest))
        rest -= sizes[-1]
    if len(sizes) > len(string.ascii_lowercase):
        raise ValueError(f"{len(sizes)} parts: more calls than letters")
    return sizes


def split(data: bytes, prefix: Path, first_room: int, room: int) -> list[Path]:
    """Writes PREFIX-a/part, PREFIX-b/part, … and each folder's `count`; returns the folders, one per call."""
    folders, offset = [], 0
    sizes = part_sizes(len(data), first_room, room)
    for letter, size in zip(string.ascii_lowercase, sizes, strict=False):
        folder = prefix.with_name(f"{prefix.name}-{letter}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "part").write_bytes(data[offset : offset + size])
        (folder / "count").write_text(f"{len(sizes)}\n")
        folders.append(folder)
        offset += size
    return folders


def join(parts_dir: Path) -> bytes:
    """The parts copied into parts_dir (part-a, part-b, …; `count` says how many), in order; SystemExit naming the
    missing ones when a call's part has not come yet."""
    count_file = parts_dir / "count"
    if not count_file.is_file():
        raise SystemExit(f"no {count_file}: no call has carried a GGUF part to this machine yet")
    letters = string.ascii_lowercase[: int(count_file.read_text())]
    missing = [f"part-{letter}" for letter in letters if not (parts_dir / f"part-{letter}").is_file()]
    if missing:
        raise SystemExit(
            f"GGUF parts missing in {parts_dir}: {', '.join(missing)} (carry .bench/peers-smol-{missing[0][-1]} in the "
            "next call)"
        )
    return b"".join((parts_dir / f"part-{letter}").read_bytes() for letter in letters)


def main(argv: list[str]) -> None:
    if argv[:1] == ["split"] and len(argv) == 5:
        folders = split(Path(argv[1]).read_bytes(), Path(argv[2]), int(argv[3]), int(argv[4]))
        for call, folder in enumerate(folders, start=1):
            print(f"call {call} carries {folder} ({(folder / 'part').stat().st_size / 2**20:.1f} MiB)")
    elif argv[:1] == ["join"] and len(argv) == 3:
        Path(argv[2]).write_bytes(lzma.decompress(join(Path(argv[1]))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

"""What DVC's cache link type costs for model-sized outputs: hardlinks (this project's `cache.type`) vs copies.

For each link type, a fresh git + DVC repository with one stage that writes a model-sized file (random bytes,
so nothing dedupes or compresses), then, timed: the `dvc repro` that writes and caches it, a second version
(`-S seed=2`), and `dvc checkout` back to the first version; disk used by the workspace and the cache together
(hardlinked files counted once, as `du` counts them). Disk figures, not GPU ones: run it where the models live.

    python bench/cache_link_cost.py --size-gib 2.2 --out OUT        # 2.2 GB: a TinyLlama-sized model
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINK_TYPES = {"hardlink": "hardlink,symlink", "copy": "copy"}

WRITE_MODEL = """import os, sys
size, seed = int(sys.argv[1]), int(sys.argv[2])
os.makedirs("models", exist_ok=True)
chunk = 64 << 20
with open("models/model.bin", "wb") as f:
    f.write(seed.to_bytes(8, "little"))
    for start in range(0, size, chunk):
        f.write(os.urandom(min(chunk, size - start)))
"""


def _run(cwd: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def disk_bytes(*roots: Path) -> int:
    """Bytes on disk under the roots, each inode once (a hardlinked file and its cache object count once)."""
    seen, total = set(), 0
    for root in roots:
        for path in root.rglob("*"):
            info = path.lstat()
            if path.is_file() and not path.is_symlink() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def measure(link_type: str, size: int, work: Path) -> dict:
    repo = work / link_type
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "bench@example.com")
    _run(repo, "git", "config", "user.name", "bench")
    _run(repo, *dvc, "init", "-q")
    _run(repo, *dvc, "config", "core.analytics", "false")
    _run(repo, *dvc, "config", "cache.type", LINK_TYPES[link_type])
    (repo / "write_model.py").write_text(WRITE_MODEL)
    (repo / "params.yaml").write_text("seed: 1\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  model:\n    cmd: python write_model.py "
        f"{size} ${{seed}}\n    deps: [write_model.py]\n    params: [seed]\n    outs: [models]\n"
    )
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "pipeline")
    first = _run(repo, *dvc, "repro")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "version 1")
    one_version = disk_bytes(repo / "models", repo / ".dvc" / "cache")
    (repo / "params.yaml").write_text("seed: 2\n")
    second = _run(repo, *dvc, "repro")
    _run(repo, "git", "checkout", "-q", "--", "params.yaml", "dvc.lock")
    checkout = _run(repo, *dvc, "checkout")
    workspace = repo / "models" / "model.bin"
    cached = [p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file() and p.samefile(workspace)]
    return {
        "cache.type": LINK_TYPES[link_type],
        "repro_seconds": first,
        "second_version_repro_seconds": second,
        "checkout_seconds": checkout,
        "disk_bytes_one_version": one_version,
        "disk_bytes_two_versions": disk_bytes(repo / "models", repo / ".dvc" / "cache"),
        "workspace_is_the_cache_object": bool(cached),
        "workspace_write_bits": bool(stat.S_IMODE(workspace.stat().st_mode) & 0o222),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.2, help="model file size in GiB (2.2: TinyLlama)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    size = int(args.size_gib * 2**30)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cache-link-", dir=args.out))
    try:
        results = {"size_bytes": size, "runs": {name: measure(name, size, work) for name in LINK_TYPES}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    gib = 2**30
    print(f"{size / gib:.2f} GiB model file | repro s | 2nd version repro s | checkout s | disk GiB (1 / 2 versions)")
    for row in results["runs"].values():
        print(
            f"{row['cache.type']:>16} | {row['repro_seconds']:.1f} | {row['second_version_repro_seconds']:.1f} | "
            f"{row['checkout_seconds']:.1f} | {row['disk_bytes_one_version'] / gib:.2f} / "
            f"{row['disk_bytes_two_versions'] / gib:.2f}"
        )


if __name__ == "__main__":
    main()

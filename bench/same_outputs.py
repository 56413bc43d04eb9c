"""Two runs' dvc.lock files, output by output: which outputs of which stages hold the same bytes (DVC's md5 of the file,
or of the directory's listing). A run of the same recipe on another machine or another commit reproduced where every
output but the timings is the same.

    python bench/same_outputs.py bench/results/preset_2026-12-07/dvc.lock bench/results/preset_2026-12-07b/dvc.lock
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def output_digests(lock: Path) -> dict[tuple[str, str], str | None]:
    """(stage, output path) -> its md5 in the lock file (None where DVC recorded none)."""
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {(stage, out["path"]): out.get("md5") for stage, entry in stages.items() for out in entry.get("outs", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lock_a", type=Path)
    parser.add_argument("lock_b", type=Path)
    args = parser.parse_args()
    a, b = output_digests(args.lock_a), output_digests(args.lock_b)
    same = 0
    for key in sorted(a.keys() | b.keys()):
        stage, path = key
        if key not in a or key not in b:
            print(f"only in {'A' if key in a else 'B'}: {stage} {path}")
        elif a[key] is not None and a[key] == b[key]:
            same += 1
        else:
            print(f"differs: {stage} {path}")
    print(f"same bytes: {same} of {len(a.keys() | b.keys())} outputs")


if __name__ == "__main__":
    main()

"""bench/fresh_repo.sh's bytecode_once: the bench scripts have stages read bytecode written once, under
PYTHONPYCACHEPREFIX, where a library has none and none would be written (the lent GPU's image), and change nothing
elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bytecode_once(tmp_path: Path, **env: str) -> dict[str, str]:
    package = tmp_path / "site" / "uncompiled_lib"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    script = (
        f"source {ROOT / 'bench/fresh_repo.sh'}; bytecode_once uncompiled_lib; "
        'echo "prefix=${PYTHONPYCACHEPREFIX:-none} dont_write=${PYTHONDONTWRITEBYTECODE:-unset}"'
    )
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True,
        env={**base, "PYTHONPATH": str(package.parent), **env},
    )  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    return dict(part.split("=", 1) for part in last.split())


def test_a_library_without_bytecode_that_none_is_written_for_gets_a_prefix(tmp_path):
    seen = _bytecode_once(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert seen == {"prefix": "/tmp/pycache", "dont_write": "unset"}


def test_a_library_whose_bytecode_will_be_written_is_left_alone(tmp_path):
    assert _bytecode_once(tmp_path) == {"prefix": "none", "dont_write": "unset"}
    assert _bytecode_once(tmp_path, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(tmp_path / "pyc")) == {
        "prefix": str(tmp_path / "pyc"),  # a prefix the user set is kept
        "dont_write": "unset",
    }

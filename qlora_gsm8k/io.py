"""Atomic writes: an interrupted stage never leaves a valid-looking artifact behind.

Files and directories are written under a hidden temporary name beside their destination, flushed to
disk, and renamed into place only once complete: a crash, Ctrl-C or SIGTERM leaves either the old
artifact, nothing, or a hidden `.<name>.*.tmp` that no stage reads (and the next write removes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Temporaries of `path` left by a killed run (SIGKILL, power loss); one writer per output."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Read and hashed 16 MiB at a time, not hashlib.file_digest's 256 KiB: the weight check runs in a thread beside the
# imports, and each chunk has to take the GIL back from them (up to 5 ms a time). 256 KiB chunks stretched 0.4 s of
# hashing to 2.0 s there (517 MB, 2 cores), 16 MiB chunks to 0.55 s.
_HASH_CHUNK = 16 * 2**20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


# Beside the weights of every model directory a stage writes: what the files held when they were written.
WEIGHT_DIGESTS = "weights.sha256.json"
_WRITER_STAGE = {"base": "base", "adapter": "train", "merged": "merge"}


def record_weight_digests(directory: str | Path) -> None:
    directory = Path(directory)
    write_json(directory / WEIGHT_DIGESTS, {f.name: file_sha256(f) for f in sorted(directory.glob("*.safetensors"))})


# What this process found each weight file to hold, by file state (path, inode, size, mtime): a file is hashed again
# once it changes. Written by the weight check's thread too (a dict item set is atomic under the GIL).
_VERIFIED: dict[tuple, str] = {}


def _file_state(path: Path) -> tuple:
    info = path.stat()
    return str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns


def verified_or_hashed_sha256(path: str | Path) -> str:
    """file_sha256, taken from the weight check when it verified this file, unchanged, in this process: the train
    stage's run fingerprint covers the base's weights, which the check has just hashed."""
    path = Path(path)
    return _VERIFIED.get(_file_state(path)) or file_sha256(path)


def verify_weight_digests(directory: str | Path) -> None:
    """The weights are what their stage wrote. DVC trusts file times, so a flipped byte in a cache object (and in
    the workspace file hardlinked to it) goes unseen: every stage that loads a model checks (2.2 GB: ~2 s)."""
    from .errors import UserError

    directory = Path(directory)
    record = directory / WEIGHT_DIGESTS
    if not record.is_file():
        return  # a model directory this pipeline did not write (model.name pointing at a local model)
    for name, digest in read_json(record).items():
        path = directory / name
        if not path.is_file():
            verified = False
        else:
            # Once per process per file state: a stage that loads the same model twice (merge) hashes it once.
            state = _file_state(path)
            verified = _VERIFIED.get(state) == digest or file_sha256(path) == digest
            if verified:
                _VERIFIED[state] = digest
        if not verified:
            stage = _WRITER_STAGE.get(directory.name, f"the stage that writes {directory}")
            raise UserError(
                f"{path} is not what its stage wrote (sha256 differs from {record.name}): the file, or the DVC cache "
                f"object it is linked to, is corrupt. Repair: find .dvc/cache -samefile {path} -delete; "
                f"rm -f {path}; dvc repro -f -s {stage} (docs/troubleshooting.md, 'Corrupt model files')"
            )


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            file = Path(dirpath) / name
            if file.is_symlink():
                continue
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # Contents on disk before the rename makes them visible, so a power cut cannot publish empty files.
        _fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

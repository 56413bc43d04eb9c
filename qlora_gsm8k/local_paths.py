"""Is a source value a local path or a Hugging Face Hub id, and what to say when the path does not exist.

`model.name`, `data.source` and `eval_sets.<name>.source` each take either. A Hub id is `owner/name` (or a bare
name); a typo of a local path (`models/smollm` for `models/smollm2`) must not be sent to the Hub, where it fails with
a message about the network and a pinned revision that has nothing to do with it."""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import UserError

_PATH_SUFFIXES = (".gguf", ".json", ".jsonl")


def looks_like_path(value: str) -> bool:
    """True for a value meant as a local path: it starts with `.`, `/` or `~`, ends in .gguf/.json/.jsonl, exists,
    or its first part is a local directory (`data/gsm8k` where `data/` exists)."""
    if value.startswith((".", "/", "~")) or value.lower().endswith(_PATH_SUFFIXES):
        return True
    path = Path(value).expanduser()
    if path.exists():
        return True
    return len(path.parts) > 1 and Path(path.parts[0]).is_dir()


def _nearest_existing(path: Path) -> tuple[Path, list[str]]:
    """The deepest existing ancestor of `path`, and its entries closest to the first missing part's name."""
    parent, missing = path, []
    while not parent.exists() and parent != parent.parent:
        missing.append(parent.name)
        parent = parent.parent
    if not parent.exists() or not parent.is_dir():
        return parent, []
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in parent.iterdir())
    wanted = missing[-1] if missing else path.name
    close = difflib.get_close_matches(wanted, entries, n=3, cutoff=0.5)
    return parent, close or [e for e in entries if not e.startswith(".")][:5]


def missing_path_error(key: str, value: str) -> UserError:
    """One line: the key, the value, that no such local path exists, and the nearest paths that do."""
    parent, nearest = _nearest_existing(Path(value).expanduser())
    if nearest:
        where = "" if str(parent) == "." else f"{parent}/"
        hint = f"; nearest existing: {', '.join(where + name for name in nearest)}"
    else:
        hint = f"; {parent} exists but holds nothing close" if parent.exists() else ""
    return UserError(f"{key} {value!r}: no such local file or directory{hint} (a Hub id is owner/name)")

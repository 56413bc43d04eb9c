"""One split of a data set, as raw rows: from a local file (all its rows), a local directory holding
<split><suffix>, or a Hugging Face Hub dataset at a pinned revision. What the rows mean is the caller's: the train
split is parsed by rows.py, eval sets by eval_rows.py."""

from __future__ import annotations

from pathlib import Path

from .datafiles import read_records
from .errors import UserError
from .hub import local_cache_only
from .local_paths import looks_like_path, missing_path_error


def read_split(
    key: str, source: str, config: str | None, revision: str | None, split: str, suffix: str, offline_hint: str
) -> tuple[list, list[int] | None, str, dict]:
    """(rows, their line numbers (None from the Hub), where they came from for errors, provenance). `key` names the
    param that holds `source` in errors; `offline_hint` says what to do when the Hub cannot be reached."""
    if looks_like_path(source):
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / f"{split}{suffix}"
        try:
            records = read_records(path)
        except FileNotFoundError:
            raise missing_path_error(key, str(path)) from None
        if not records:
            raise UserError(f"{key}: {path} holds no rows")
        provenance = {"source": str(path), "kind": "local"}
        return [row for _, row in records], [line for line, _ in records], str(path), provenance
    local_cache_only()  # before importing datasets
    try:
        import datasets
    except ImportError:
        raise UserError(f"the 'datasets' package is needed to read {key} from the Hub") from None
    try:
        loaded = datasets.load_dataset(source, config, revision=revision, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not reachable"
        which = f"config {config!r}, " if config else ""
        raise UserError(
            f"cannot load dataset {source!r} ({which}split {split!r}, revision {revision}) from the Hugging Face Hub "
            f"({type(err).__name__}). Offline? {offline_hint}"
        ) from None
    provenance = {"source": source, "config": config, "split": split, "revision": revision, "kind": "hub"}
    return list(loaded), None, f"{source}:{split}", provenance

"""An evaluation set (an entry of `eval_sets` in params.yaml) fetched: its source read in its layout, normalised
into eval_rows.EvalRow, sliced, and checked against the train slice. The same code runs in check_params (before any
output is touched) and in the set's fetch_eval stage."""

from __future__ import annotations

from .config import Params
from .dataset_sources import read_split
from .errors import UserError
from .eval_config import EvalSetConfig
from .eval_rows import EvalRow, normalise_rows
from .gsm8k import eval_overlap, take_slice
from .rows import Example

# What a local source of each layout looks like, for the offline hint.
_EXAMPLE_SOURCE = {"gsm8k": "/path/to/gsm8k", "svamp": "/path/to/SVAMP.json", "plain": "/path/to/rows.jsonl"}
# A directory source holds <split><suffix>: SVAMP's Hub repository and download are JSON lists.
_SUFFIX = {"gsm8k": ".jsonl", "svamp": ".json", "plain": ".jsonl"}


def source_of(name: str, cfg: EvalSetConfig, params: Params) -> tuple[str, str, str | None, str | None]:
    """(param key, source, config, revision) the set reads: its own, or with `source: null` the training source."""
    if cfg.source is None:
        data = params.data
        return "data.source", data.source, data.config, data.revision
    return f"eval_sets.{name}.source", cfg.source, cfg.config, cfg.revision


def load_eval_set(name: str, cfg: EvalSetConfig, params: Params) -> tuple[list[EvalRow], dict]:
    """Every row of the set's source and split, normalised, and where they came from."""
    key, source, config, revision = source_of(name, cfg, params)
    hint = (
        f"Set {key} to a local file or directory in the {cfg.layout} layout, e.g. dvc exp run "
        f"-S {key}={_EXAMPLE_SOURCE[cfg.layout]}, or turn the set off: -S eval_sets.{name}.enabled=false"
    )
    rows, line_numbers, where, provenance = read_split(
        key, source, config, revision, cfg.split, _SUFFIX[cfg.layout], hint
    )
    return normalise_rows(cfg.layout, rows, where, line_numbers), provenance


def fetch_eval_set(name: str, params: Params, train_slice: list[Example]) -> tuple[list[EvalRow], dict]:
    """The set's slice and its provenance; an empty slice, read from nowhere, when the set is off. Refused when more
    of it than data.max_eval_overlap is in the train slice."""
    cfg = params.eval_sets.get(name)
    if cfg is None:
        raise UserError(f"no eval set named {name!r} in eval_sets (has: {', '.join(params.eval_sets)})")
    if not cfg.enabled:
        return [], {"kind": "off"}
    rows, provenance = load_eval_set(name, cfg, params)
    chosen = take_slice(rows, cfg.offset, cfg.size, cfg.shuffle_seed, f"eval_sets.{name}")
    provenance["eval_rows_in_train"] = eval_overlap(train_slice, chosen, params.data.max_eval_overlap, name)
    return chosen, provenance

"""params.yaml read, refused when it holds a token, and type-checked key by key into the config dataclasses
(qlora_gsm8k.config), whose validate() then checks ranges and combinations."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Params
from .errors import UserError

MAX_STRING_PARAM = 1024


class _TooLong(UserError):
    """A string param over MAX_STRING_PARAM: said as such even where the param may also be null (str | None)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(tp))
    if tp is float:
        return "a finite number"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", item, item_tp) for i, item in enumerate(value)]
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except _TooLong:
                raise
            except UserError:
                continue
    elif tp is float:
        # YAML reads 2e-4 (no dot) as a string; accept it as the number users meant.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            number = None
        # .nan/.inf would slip past the range checks (nan < 0 is False) and ruin a run much later.
        if number is not None and math.isfinite(number):
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is str:
        if isinstance(value, str) and value:
            if len(value) > MAX_STRING_PARAM:
                # dvc.lock and every experiment copy each param; no name, path or revision is this long.
                raise _TooLong(f"{key} is {len(value):,} characters long; at most {MAX_STRING_PARAM} are allowed")
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise UserError(f"{key} must be {_type_name(tp)}, got {value!r}")


# Keys that moved when the evaluation sets became entries of `eval_sets` (README: migration).
MOVED_KEYS = {
    "svamp": "eval_sets.svamp (same keys, plus layout: svamp)",
    "data.eval_size": "eval_sets.gsm8k.size",
    "data.eval_offset": "eval_sets.gsm8k.offset",
}


def _mapping(raw: Any, key: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{key or 'params'} must be a mapping, got {raw!r}")
    return raw


def _build(cls: type, raw: Any, prefix: str) -> Any:
    raw = _mapping(raw, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)  # YAML keys need not be strings (1:, null:)
    if unknown:
        where = f"{prefix}." if prefix else ""
        key = f"{where}{unknown[0]}"
        if key in MOVED_KEYS:
            raise UserError(f"{key} moved to {MOVED_KEYS[key]}; rename it in params.yaml (README: migration)")
        typed = str(unknown[0])
        # a near spelling (lora.dropuot), else a longer name for a key (lora.rank for r)
        close = (
            difflib.get_close_matches(typed, names, n=1, cutoff=0.6) or [n for n in names if typed.startswith(n)][:1]
        )
        guess = f" (did you mean {where}{close[0]}?)" if close else ""
        raise UserError(
            f"unknown param {key}{guess}; allowed {prefix or 'sections'}: {', '.join(names)}; remove it from "
            f"params.yaml (dvc exp run -S +{key}=... writes it there and leaves it)"
        )
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], key)
        elif typing.get_origin(tp) is dict:
            # name -> entry (eval_sets): each entry built like a section, its keys named with the entry's name.
            entry_type = typing.get_args(tp)[1]
            entries = _mapping(raw[name], key)
            kwargs[name] = {str(entry): _build(entry_type, value, f"{key}.{entry}") for entry, value in entries.items()}
        else:
            kwargs[name] = _coerce(key, raw[name], tp)
    return cls(**kwargs)


def parse_params(raw: Any) -> Params:
    params = _build(Params, raw, "")
    params.validate()
    return params


# Hugging Face user access tokens: "hf_" and 30-odd letters and digits.
_HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def refuse_secrets(text: str, path: Path) -> None:
    """A token in params.yaml would be committed to git and copied into dvc.lock and every experiment:
    refuse it, naming the line but never echoing the value."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if _HF_TOKEN_PATTERN.search(line):
            raise UserError(
                f"{path}:{line_no} holds what looks like a Hugging Face token; remove it (and revoke it if it "
                "was committed) and set the HF_TOKEN environment variable instead: params are recorded in git "
                "and dvc.lock, the environment is not"
            )


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    refuse_secrets(text, path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from None
    return parse_params(raw)


def params_as_dict(params: Params) -> dict[str, Any]:
    return dataclasses.asdict(params)

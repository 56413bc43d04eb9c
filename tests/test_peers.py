"""bench/peers.py's CPU smoke: ours, TRL (defaults and tuned) and Unsloth on the tiny model and the same rows, each
in its own process, each adapter scored by our evaluator. TRL is not in requirements.txt: its parts are skipped
where it is not installed. Unsloth cannot run here (not installed): its failure must be recorded, not crash."""

import importlib.util
import json
import math
import sys

import pytest

from conftest import REPO_ROOT, run
from qlora_gsm8k.synthetic import write_dataset_dir
from qlora_gsm8k.train_config import TrainConfig, optimizer_steps

TRAIN_ROWS, EVAL_ROWS, MICRO_BATCH = 16, 4, 4
HAS_TRL = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None
NO_TRL = "trl is not installed (not in requirements.txt; pip install trl==1.16.0 to run the TRL systems)"
TRL_SYSTEMS = ["trl-defaults", "trl-tuned"] if HAS_TRL else []
SYSTEMS = ["ours", *TRL_SYSTEMS, "unsloth"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    data = write_dataset_dir(tmp_path_factory.mktemp("gsm8k"), train_rows=TRAIN_ROWS, test_rows=EVAL_ROWS)
    out = tmp_path_factory.mktemp("peers")
    command = [sys.executable, "bench/peers.py", "--tiny", "--data", str(data), "--out", str(out)]
    command += ["--train-rows", str(TRAIN_ROWS), "--eval-rows", str(EVAL_ROWS), "--max-new-tokens", "8"]
    command += ["--systems", ",".join(SYSTEMS), "--set", f"train.micro_batch_size={MICRO_BATCH}"]
    result = run(command, cwd=REPO_ROOT)
    return json.loads((out / "peers.json").read_text()), (out / "peers.md").read_text(), result.stdout, out


def trained(results: dict, name: str) -> dict:
    row = results["systems"][name]["train"]
    assert row["status"] == "ok", (name, row.get("error"), row.get("traceback"))
    return row


@pytest.mark.slow
def test_each_system_records_its_speed_loss_curve_and_settings(smoke):
    results, _, _, out = smoke
    steps, _ = optimizer_steps(TRAIN_ROWS, TrainConfig(micro_batch_size=MICRO_BATCH))
    assert steps > 1
    for name in ["ours", *TRL_SYSTEMS]:
        row = trained(results, name)
        assert math.isfinite(row["tokens_per_second"]) and row["tokens_per_second"] > 0, name
        assert row["steps"] == steps and row["ms_per_step"] > 0, name
        assert len(row["losses"]) == steps and row["loss_steps"] == list(range(1, steps + 1)), name
        assert all(math.isfinite(x) and x > 0 for x in row["losses"]), name
        assert row["used"]["per_device_train_batch_size"] == MICRO_BATCH, name
        assert row["used"]["learning_rate"] == results["params_train"]["learning_rate"] == 1e-3, name
        assert row["used"]["quant_type"] == "nf4" and row["used"]["trainable_params"] > 0, name
        assert (out / name / "train.log").is_file() and row["versions"]["torch"], name
    assert results["peft_method"] == "rslora" and len(results["params_lora"]["target_modules"]) == 7
    assert trained(results, "ours")["used"]["gradient_checkpointing"] is False
    assert "on_train_begin" in results["timing"]


@pytest.mark.slow
def test_trl_trains_on_exactly_our_tokens(smoke):
    if not HAS_TRL:
        pytest.skip(NO_TRL)
    results, _, _, _ = smoke
    ours = trained(results, "ours")
    for name in TRL_SYSTEMS:
        row = trained(results, name)
        # The same real-token count, from the same ids and the same supervised positions, row by row.
        assert row["real_tokens"] == ours["real_tokens"] > 0, name
        assert row["row_check"] == ours["row_check"], name
        assert row["row_check"]["rows_with_our_ids_and_labels"] == TRAIN_ROWS, name
        assert row["settings"]["eos_token"] == ours["settings"]["eos_token"], name
        assert row["settings"]["pad_token"] == ours["settings"]["pad_token"] != row["settings"]["eos_token"], name
    assert trained(results, "trl-defaults")["used"]["gradient_checkpointing"] is True  # TRL's default
    tuned = trained(results, "trl-tuned")
    assert tuned["used"]["gradient_checkpointing"] is False and tuned["settings"]["padding_free_used"] is True
    assert tuned["settings"]["liger_kernel"] is False  # no CUDA GPU here: left out, and said so
    assert tuned["settings"]["liger_kernel_note"]


@pytest.mark.slow
def test_unsloth_failure_is_recorded_and_the_others_still_run(smoke):
    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("unsloth is installed here: it may run (its CPU fallback) instead of failing")
    results, table, _, _ = smoke
    row = results["systems"]["unsloth"]["train"]
    assert row["status"] == "failed" and "unsloth" in row["error"].lower() and row["traceback"]
    assert "eval" not in results["systems"]["unsloth"]
    assert "**unsloth** (training, failed)" in table


@pytest.mark.slow
def test_every_adapter_is_scored_by_our_evaluator_and_the_table_lists_every_system(smoke):
    results, table, stdout, out = smoke
    for name in ["ours", *TRL_SYSTEMS]:
        evaluated = results["systems"][name]["eval"]
        assert evaluated["status"] == "ok", (name, evaluated.get("error"))
        assert evaluated["questions"] == EVAL_ROWS and len(evaluated["correct_flexible"]) == EVAL_ROWS, name
        assert 0 <= evaluated["hit_token_cap_rate"] <= 1 and evaluated["perplexity"] > 1, name
        assert evaluated["evaluated_as"] == "dequantized" and evaluated["merge_check"]["check_examples"] > 0
    for name in TRL_SYSTEMS:
        assert results["systems"][name]["eval"]["adapter_names"] == "the same tensor names as ours"
        paired = results["systems"][name]["paired_vs_ours"]["flexible"]
        assert 0 <= paired["mcnemar_p"] <= 1
        assert sum(v for k, v in paired.items() if k.startswith(("flips_", "both_"))) == EVAL_ROWS, name
    for name in SYSTEMS:
        assert f"| {name} |" in table, name
    assert table.strip() in stdout  # printed last
    assert table.startswith("Model: tiny-llama") and "A CPU run" in table
    assert (out / "peers_loss.png").stat().st_size > 0


def test_prompt_completion_rows_tokenize_to_our_ids_and_labels(tiny_tokenizer, examples):
    """What TRL does with a prompt-completion row (prompt + completion tokenized as one text, the completion
    supervised) gives exactly the ids and labels the train stage trains on."""
    from bench.peer_systems import compare_rows, prompt_completion_rows
    from qlora_gsm8k.prompts import IGNORE_INDEX, ChatFormat, encode_examples

    chat = ChatFormat.of(tiny_tokenizer)
    encoded, kept = encode_examples(tiny_tokenizer, examples[:12], 512, chat)
    prepared = []
    for row in prompt_completion_rows(tiny_tokenizer, kept, chat):
        prompt = tiny_tokenizer(row["prompt"])["input_ids"]
        ids = tiny_tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert ids[: len(prompt)] == prompt
        prepared.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]})
        assert row["completion"].endswith(tiny_tokenizer.eos_token)
    check = compare_rows(prepared, encoded)
    assert check["rows"] == check["rows_with_our_ids_and_labels"] == 12
    assert check["tokens"] == sum(len(e.input_ids) for e in encoded)


def test_an_adapter_under_another_prefix_is_renamed_to_ours_and_other_modules_are_refused(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from bench.peer_systems import adapter_tensor_names, loadable_adapter

    module = "layers.0.self_attn.q_proj.lora_A.weight"

    def adapter(name: str, prefix: str):
        folder = tmp_path / name
        folder.mkdir()
        save_file({prefix + module: torch.ones(2, 4)}, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text("{}")
        return folder

    ours = adapter("ours", "base_model.model.model.")
    same, note = loadable_adapter(adapter("same", "base_model.model.model."), ours, tmp_path / "same-out")
    assert note == "the same tensor names as ours" and same == tmp_path / "same"
    renamed, note = loadable_adapter(adapter("other", "base_model.model.model.model."), ours, tmp_path / "o-out")
    assert "renamed" in note and adapter_tensor_names(renamed) == adapter_tensor_names(ours)
    assert torch.equal(
        load_file(str(renamed / "adapter_model.safetensors"))["base_model.model.model." + module], torch.ones(2, 4)
    )
    assert (renamed / "adapter_config.json").is_file()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    save_file(
        {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 4)},
        str(stranger / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="not ours"):
        loadable_adapter(stranger, ours, tmp_path / "s-out")

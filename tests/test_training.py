"""QLoRA for real on CPU: bitsandbytes NF4 base, peft LoRA, the pre-flight label checks, train_adapter."""

from __future__ import annotations

import json
import math

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from conftest import train_tiny_adapter
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.modeling import load_model, load_tokenizer
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.peft_methods import lora_config
from qlora_gsm8k.preflight import PreflightError, preflight
from qlora_gsm8k.prompts import IGNORE_INDEX, Collator, Encoded, encode_examples, stop_token_ids
from qlora_gsm8k.train_config import LoraConfig, QuantConfig

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linear4bit(model) -> dict[str, bnb.nn.Linear4bit]:
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _dequantized(module: bnb.nn.Linear4bit) -> torch.Tensor:
    return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).clone()


# --- the 4-bit base ----------------------------------------------------------------------------------


@pytest.fixture
def base_4bit(tiny_base_dir):
    return load_model(tiny_base_dir, dtype=torch.float32, quant=QuantConfig(quant_type="nf4", double_quant=True))


def test_base_loads_as_nf4_params4bit(base_4bit, tiny_base_dir):
    quantized = _linear4bit(base_4bit)
    # every projection of both layers; lm_head stays in full precision
    expected = [
        f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
        for i in range(2)
        for p in PROJECTIONS
    ]
    assert sorted(quantized) == sorted(expected)
    full = load_model(tiny_base_dir, dtype=torch.float32)
    for name, module in quantized.items():
        weight = module.weight
        assert isinstance(weight, bnb.nn.Params4bit)
        assert weight.dtype == torch.uint8
        assert weight.quant_state.quant_type == "nf4"
        assert weight.quant_state.nested  # double quantisation of the absmax
        original = full.get_submodule(name).weight
        # two 4-bit codes per byte
        assert weight.numel() * 2 == original.numel()
        # NF4 is a rounding of the real weights: close, but not equal
        deq = _dequantized(module)
        assert deq.shape == original.shape
        err = (deq - original).abs().max()
        assert 0 < err < 0.25 * original.abs().max()
    assert not isinstance(base_4bit.lm_head, bnb.nn.Linear4bit)


def test_fp4_is_a_different_quantisation(tiny_base_dir, base_4bit):
    fp4 = load_model(tiny_base_dir, dtype=torch.float32, quant=QuantConfig(quant_type="fp4", double_quant=False))
    name = "model.layers.0.self_attn.q_proj"
    module = fp4.get_submodule(name)
    assert module.weight.quant_state.quant_type == "fp4"
    assert not torch.equal(_dequantized(module), _dequantized(base_4bit.get_submodule(name)))


# --- a QLoRA optimisation loop -----------------------------------------------------------------------


@pytest.mark.slow
def test_qlora_steps_train_only_lora_and_leave_the_4bit_base_untouched(base_4bit, tiny_tokenizer, examples):
    from peft import get_peft_model, prepare_model_for_kbit_training

    before = {name: (m.weight.data.clone(), _dequantized(m)) for name, m in _linear4bit(base_4bit).items()}
    model = prepare_model_for_kbit_training(base_4bit, use_gradient_checkpointing=False)
    torch.manual_seed(0)  # LoRA A's random init: the same trajectory whatever ran before
    model = get_peft_model(model, lora_config(LoraConfig(r=8, alpha=16, dropout=0.0)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # (A, B) x (q_proj, v_proj) x 2 layers
    lora_before = {n: p.detach().clone() for n, p in trainable.items()}
    assert all(not p.any() for n, p in lora_before.items() if ".lora_B." in n)  # B starts at zero

    encoded, _ = encode_examples(tiny_tokenizer, examples[:4], max_length=None)
    batch = Collator(tiny_tokenizer.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert sum(b < a for a, b in zip(losses, losses[1:], strict=False)) >= 9, losses

    for name, p in trainable.items():
        assert not torch.equal(p.detach(), lora_before[name]), f"{name} did not change"
    after = _linear4bit(model)
    assert len(after) == len(before)
    for name, (codes, deq) in before.items():
        # LoRA wraps the targeted layers; the 4-bit layer is then its base_layer
        wrapped = name.endswith(("q_proj", "v_proj"))
        module = after[f"base_model.model.{name}" + (".base_layer" if wrapped else "")]
        assert isinstance(module.weight, bnb.nn.Params4bit)
        assert module.weight.quant_state.quant_type == "nf4"
        assert torch.equal(module.weight.data, codes), f"{name}: 4-bit codes changed"
        assert torch.equal(_dequantized(module), deq), f"{name}: dequantised weights changed"
        assert not module.weight.requires_grad


# --- pre-flight ----------------------------------------------------------------------------------------


def _good(tokenizer, rows):
    encoded, kept = encode_examples(tokenizer, rows, max_length=None)
    return encoded, kept


def _preflight(tokenizer, kept, encoded, collator=None):
    preflight(tokenizer, kept, encoded, collator or Collator(tokenizer.pad_token_id), stop_token_ids(tokenizer))


def test_preflight_passes_good_encodings(tiny_tokenizer, examples):
    encoded, kept = _good(tiny_tokenizer, examples[:8])
    _preflight(tiny_tokenizer, kept, encoded)


def _broken_row(tokenizer, enc: Encoded, kind: str) -> Encoded:
    ids, labels = list(enc.input_ids), list(enc.labels)
    if kind == "prompt masked":
        labels = list(ids)  # labels = input_ids: the prompt is trained on
    elif kind == "EOS supervised":
        labels[-1] = IGNORE_INDEX  # what pad == eos with DataCollatorForLanguageModeling does
    elif kind == "no BOS on top of the template":
        # a second BOS, as when the templated text is tokenized again with special tokens
        ids = [tokenizer.bos_token_id] + ids
        labels = [IGNORE_INDEX] + labels
    elif kind == "response supervised":
        labels = [IGNORE_INDEX] * len(ids)
    elif kind == "same prompt":
        ids = ids[:2] + ids[3:]
        labels = labels[:2] + labels[3:]
    return Encoded(input_ids=ids, labels=labels)


@pytest.mark.parametrize(
    "check", ["prompt masked", "EOS supervised", "no BOS on top of the template", "response supervised", "same prompt"]
)
def test_preflight_names_the_broken_check_in_any_row(tiny_tokenizer, examples, check):
    encoded, kept = _good(tiny_tokenizer, examples[:8])
    # row 6: past the 4 rows the old pre-flight looked at
    broken = encoded[:6] + [_broken_row(tiny_tokenizer, encoded[6], check)] + encoded[7:]
    with pytest.raises(PreflightError, match=f"^pre-flight check '{check}' failed: ") as err:
        _preflight(tiny_tokenizer, kept, broken)
    assert f"row {kept[6].index}" in str(err.value)
    assert isinstance(err.value, UserError)


def test_preflight_passes_chatml_with_a_bos_in_every_turn(tiny_base_dir, examples):
    """The old check demanded exactly one BOS, so no ChatML model (SmolLM2, Qwen2.5) could be trained."""
    from test_prompts import CHATML

    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = CHATML
    encoded, kept = _good(tok, examples[:8])
    assert all(e.input_ids.count(tok.bos_token_id) == 3 for e in encoded)
    _preflight(tok, kept, encoded)


def test_preflight_end_of_turn_must_stop_generation(tiny_base_dir, examples):
    from transformers import GenerationConfig

    tok = load_tokenizer(tiny_base_dir)
    encoded, kept = _good(tok, examples[:4])
    # what a GGUF file's metadata did for SmolLM2: generation would stop at a token the template never ends with
    with pytest.raises(PreflightError, match="'EOS supervised'.*never stops it"):
        stop_ids = stop_token_ids(tok, GenerationConfig(eos_token_id=tok.bos_token_id))
        preflight(tok, kept, encoded, Collator(tok.pad_token_id), [i for i in stop_ids if i != tok.eos_token_id])


def test_preflight_pad_equal_to_eos(tiny_base_dir, examples):
    tok = load_tokenizer(tiny_base_dir)
    encoded, kept = _good(tok, examples[:4])
    tok.pad_token = tok.eos_token
    with pytest.raises(PreflightError, match="'pad is no stop token'"):
        _preflight(tok, kept, encoded)


class _LabelsOnPaddingCollator(Collator):
    """A collator that pads labels with the pad id instead of -100 (the bug the check exists for)."""

    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["labels"][batch["attention_mask"] == 0] = self.pad_token_id
        return batch


def test_preflight_padding_masked(tiny_tokenizer, examples):
    encoded, kept = _good(tiny_tokenizer, examples[:4])
    assert len({len(e.input_ids) for e in encoded}) > 1  # the batch has padding
    with pytest.raises(PreflightError, match="'padding masked'"):
        _preflight(tiny_tokenizer, kept, encoded, _LabelsOnPaddingCollator(tiny_tokenizer.pad_token_id))


# --- train_adapter end to end ----------------------------------------------------------------------------


def _tiny_params(**train):
    return parse_params(
        {
            "model": {"name": "tiny-llama"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "train": {
                "micro_batch_size": 4,
                "max_length": 256,
                "learning_rate": 2e-2,
                "epochs": 1.0,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                "save_steps": 50,
                **train,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base_dir, examples):
    root = tmp_path_factory.mktemp("train")
    rows = examples[:12]
    metrics = train_tiny_adapter(_tiny_params(), rows, tiny_base_dir, root)
    return root, metrics


@pytest.mark.slow
def test_train_adapter_metrics_and_files(trained, tiny_base_dir):
    root, metrics = trained
    adapter = root / "adapter"
    assert metrics["steps"] == 3  # 12 rows / micro batch 4, one epoch
    assert metrics["examples"] == 12 and metrics["dropped_too_long"] == 0
    assert math.isfinite(metrics["train_loss"]) and 0 < metrics["train_loss"] < 10
    assert metrics["resumed"] is False
    assert metrics["compute_dtype"] == "float32" and metrics["device"] == "cpu"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(tiny_base_dir) and config["revision"] is None
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == 8 and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == metrics["trainable_params"]
    for key, tensor in tensors.items():
        if ".lora_B." in key:
            assert tensor.abs().max() > 0, f"{key} is still zero: the adapter never trained"
    # the tokenizer travels with the adapter, with its distinct pad
    tok = load_tokenizer(adapter)
    assert tok.pad_token_id != tok.eos_token_id
    # checkpoints of a finished run are removed
    checkpoints = root / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


@pytest.mark.slow
def test_adapter_loads_with_auto_peft_and_changes_outputs(trained, tiny_base_dir, tiny_tokenizer, examples):
    from peft import AutoPeftModelForCausalLM, PeftModel

    root, _ = trained
    model = AutoPeftModelForCausalLM.from_pretrained(str(root / "adapter"))
    assert isinstance(model, PeftModel)
    base = load_model(tiny_base_dir, dtype=torch.float32)
    encoded, _ = encode_examples(tiny_tokenizer, examples[:2], None)
    ids = torch.tensor([encoded[0].input_ids])
    with torch.no_grad():
        tuned_logits = model(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
        with model.disable_adapter():
            disabled = model(input_ids=ids).logits
    assert torch.allclose(disabled, base_logits, atol=1e-5)
    assert (tuned_logits - base_logits).abs().max() > 1e-3


@pytest.mark.slow
def test_train_adapter_drops_long_rows(tmp_path, tiny_base_dir, tiny_tokenizer, examples):
    rows = examples[:8]
    lengths = sorted(len(e.input_ids) for e in encode_examples(tiny_tokenizer, rows, None)[0])
    limit = lengths[5]
    metrics = train_tiny_adapter(_tiny_params(max_length=limit, micro_batch_size=8), rows, tiny_base_dir, tmp_path)
    kept = sum(n <= limit for n in lengths)
    assert metrics["examples"] == kept and metrics["dropped_too_long"] == len(rows) - kept > 0
    assert metrics["steps"] == 1


def test_train_adapter_refuses_when_every_row_is_too_long(tmp_path, tiny_base_dir, examples):
    rows = examples[:4]
    with pytest.raises(UserError, match=r"longer than train\.max_length=16"):
        train_tiny_adapter(_tiny_params(max_length=16), rows, tiny_base_dir, tmp_path)
    assert not (tmp_path / "adapter").exists()


# --- speed levers that must not change what is trained --------------------------------------------------


def test_liger_kernel_auto_is_off_without_a_gpu_and_true_says_what_is_missing():
    from qlora_gsm8k.accelerators import liger_kernel_enabled
    from qlora_gsm8k.train_config import TrainConfig

    assert liger_kernel_enabled(TrainConfig(liger_kernel="auto")) is False
    assert liger_kernel_enabled(TrainConfig(liger_kernel=False)) is False
    with pytest.raises(UserError, match=r"train.liger_kernel is true but needs a CUDA GPU"):
        liger_kernel_enabled(TrainConfig(liger_kernel=True))


def test_compile_is_refused_off_cuda_and_compiles_each_decoder_layer_under_peft(tiny_base_dir):
    import torch
    from peft import get_peft_model

    from qlora_gsm8k.accelerators import compile_decoder_layers, compile_enabled
    from qlora_gsm8k.modeling import load_model
    from qlora_gsm8k.peft_methods import lora_config
    from qlora_gsm8k.train_config import LoraConfig, TrainConfig

    assert compile_enabled(TrainConfig()) is False
    with pytest.raises(UserError, match=r"train.compile is true but needs a CUDA GPU"):
        compile_enabled(TrainConfig(compile=True))
    model = get_peft_model(load_model(tiny_base_dir, dtype=torch.float32), lora_config(LoraConfig()))
    layers = model.base_model.model.model.layers
    assert compile_decoder_layers(model) == len(layers) == 2
    # Each layer's call goes through its compiled wrapper; nothing else (embeddings, lm_head) is compiled.
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert model.base_model.model.lm_head._compiled_call_impl is None
    with pytest.raises(UserError, match="no decoder layers"):
        compile_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize(
    ("compute", "upcast", "expected"),
    [
        # bf16 compute: the unquantized weights stay 16-bit (no fp32 residual stream, no casts per op).
        (torch.bfloat16, None, torch.bfloat16),
        # fp16 compute: peft's fp32 upcast, as fp16 norms overflow.
        (torch.float16, None, torch.float32),
        # the benchmark's ablation forces the upcast under bf16
        (torch.bfloat16, True, torch.float32),
    ],
)
def test_freeze_base_freezes_everything_and_upcasts_only_when_needed(tiny_base_dir, compute, upcast, expected):
    from qlora_gsm8k.training import freeze_base

    name = str(compute).removeprefix("torch.")
    model = load_model(tiny_base_dir, dtype=compute, quant=QuantConfig(compute_dtype=name))
    model = freeze_base(model, compute, gradient_checkpointing=False, upcast_fp32=upcast)
    assert not any(p.requires_grad for p in model.parameters())
    unquantized = {n: p.dtype for n, p in model.named_parameters() if not isinstance(p, bnb.nn.Params4bit)}
    assert {"model.norm.weight", "lm_head.weight", "model.embed_tokens.weight"} <= set(unquantized)
    assert set(unquantized.values()) == {expected}
    assert len(_linear4bit(model)) == 2 * len(PROJECTIONS)  # the 4-bit layers are untouched


def test_adapter_names_a_hub_base_by_id_and_revision(tmp_path):
    """Portable: a Hub base is named so the adapter loads from any directory; others stay the stage's path."""
    from qlora_gsm8k.cards import adapter_base_reference

    hub = tmp_path / "hub-base"
    hub.mkdir()
    revision = "fe8a4ea1ffedaf415f4da2f062534de366a451e6"
    (hub / "provenance.json").write_text(json.dumps({"name": "org/model", "revision": revision, "kind": "hub"}))
    assert adapter_base_reference(hub) == ("org/model", revision)
    local = tmp_path / "local-base"
    local.mkdir()
    (local / "provenance.json").write_text(json.dumps({"name": "/m", "revision": None, "kind": "local"}))
    assert adapter_base_reference(local) == (str(local), None)


def test_parameters_counted_once_give_the_trainers_own_flop_count(tmp_path):
    """The per-step parameter walk removed from the training loop (issue 17) without changing total_flos."""
    from transformers import Trainer, TrainingArguments

    from qlora_gsm8k.tiny import build_tiny_llama
    from qlora_gsm8k.trainer import trainer_class

    model, _ = build_tiny_llama()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    ours, theirs = trainer_class(Trainer)(model=model, args=args), Trainer(model=model, args=args)
    assert type(ours) is not Trainer
    calls = []
    counted = model.num_parameters
    model.num_parameters = lambda **kw: calls.append(kw) or counted(**kw)
    for width in (7, 13):
        inputs = {"input_ids": torch.ones(3, width, dtype=torch.long)}
        assert ours.floating_point_ops(inputs) == theirs.floating_point_ops(inputs) > 0
    assert len(calls) == 1 + 2  # ours once, the Trainer's own at every call

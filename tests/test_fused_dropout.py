"""LoRA dropout fused into lora_A (qlora_gsm8k/fused_dropout.py): the same masks, loss and gradients as peft's own
dropout on the real 4-bit model, fewer bytes kept for the backward pass, and an adapter saved as a plain LoRA one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_lora_params, train_tiny_adapter
from qlora_gsm8k.fused_dropout import DropoutThenLinear, fuse_lora_dropout
from qlora_gsm8k.modeling import load_model
from qlora_gsm8k.peft_methods import adapter_config
from qlora_gsm8k.training import SpeedLevers, freeze_base

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _adapted(tiny_base_dir, params):
    from peft import get_peft_model

    model = load_model(tiny_base_dir, dtype=torch.float32, quant=params.quant)
    model = freeze_base(model, torch.float32, gradient_checkpointing=False)
    torch.manual_seed(0)
    model = get_peft_model(model, adapter_config(params))
    for name, weight in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: no gradient would reach A, nor any dropout mask matter
            torch.nn.init.normal_(weight, std=0.05)
    return model.train()


def _step(model, ids, autocast: bool):
    """One forward and backward from the same RNG state: the loss, the LoRA gradients and the bytes autograd
    kept for the backward pass (each storage counted once, as the allocator holds it)."""
    kept = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # kept anyway
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(kept.values())


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_fused_dropout_gives_peft_dropouts_loss_and_gradients_and_keeps_fewer_bytes(tiny_base_dir, autocast):
    model = _adapted(tiny_base_dir, tiny_lora_params(dropout=0.2, seed=3))
    config = model.base_model.model.config
    ids = torch.randint(3, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
    loss, grads, kept = _step(model, ids, autocast)

    fused = fuse_lora_dropout(model)
    assert fused == len(TARGETS) * config.num_hidden_layers
    assert sum(isinstance(m, DropoutThenLinear) for m in model.modules()) == fused
    fused_loss, fused_grads, fused_kept = _step(model, ids, autocast)

    # bf16: peft drops the float32 input and rounds the result, the fused path rounds first (a few bf16 ulps).
    tolerance = 2e-2 if autocast else 1e-5
    assert fused_loss.item() == pytest.approx(loss.item(), rel=tolerance)
    assert fused_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert (fused_grads[name] - grad).abs().max() <= tolerance * grad.abs().max(), name
    # Per input element of each adapted layer: the dropped copy lora_A kept (float32, 4 bytes; under autocast its
    # bf16 cast, 2 bytes) is gone, a bool mask (1 byte) kept instead. (At least: under autocast the casts of the
    # adapter weights kept change too, a few hundred bytes here.)
    elements = ids.numel() * config.num_hidden_layers * (2 * config.hidden_size + config.intermediate_size)
    assert kept - fused_kept >= (2 - 1 if autocast else 4 - 1) * elements


def test_without_dropout_or_outside_training_nothing_changes(tiny_base_dir):
    model = _adapted(tiny_base_dir, tiny_lora_params(dropout=0.0))
    assert fuse_lora_dropout(model) == 0  # peft's Identity: nothing kept, nothing to fuse

    model = _adapted(tiny_base_dir, tiny_lora_params(dropout=0.2, seed=3))
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
        fuse_lora_dropout(model)
        after = model.eval()(input_ids=ids).logits
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_with_fused_dropout_learns_the_same_adapter_under_the_same_names(tiny_base_dir, examples, tmp_path):
    params = tiny_lora_params(dropout=0.2, seed=3, epochs=1.0, gradient_checkpointing=False, cuda_graphs=False)
    rows = examples[:16]
    plain = train_tiny_adapter(params, rows, tiny_base_dir, tmp_path / "plain")
    fused = train_tiny_adapter(params, rows, tiny_base_dir, tmp_path / "fused", levers=SpeedLevers(fused_dropout=True))
    assert fused["steps"] == plain["steps"] == 4
    assert fused["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    plain_weights = load_file(tmp_path / "plain/adapter/adapter_model.safetensors")
    fused_weights = load_file(tmp_path / "fused/adapter/adapter_model.safetensors")
    assert fused_weights.keys() == plain_weights.keys()
    for name, weight in plain_weights.items():
        assert torch.allclose(fused_weights[name], weight, rtol=1e-3, atol=1e-5), name

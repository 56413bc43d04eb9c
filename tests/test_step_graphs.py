"""train.cuda_graphs' step: fixed-shape batches, the chunked LM-head loss, gradients into persistent buffers. The
recording itself needs a CUDA GPU (bench/PEERS.md measures it there); its arithmetic runs here, eagerly
(record=False), against the HF model's own loss and backward."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_lora_params, train_tiny_adapter
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.modeling import load_model
from qlora_gsm8k.peft_methods import adapter_config
from qlora_gsm8k.prompts import IGNORE_INDEX, Collator, encode_examples
from qlora_gsm8k.step_graphs import (
    MIN_MICRO_BATCHES,
    GraphedSteps,
    StaticShapeCollator,
    graphed_steps_for,
    lm_head_cross_entropy,
)
from qlora_gsm8k.training import SpeedLevers, freeze_base


@pytest.mark.parametrize("chunk", [5, 4096])
def test_chunked_lm_head_loss_and_gradient_equal_full_logits_cross_entropy(chunk):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen)
    labels = torch.randint(0, 50, (3, 11), generator=gen)
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels[2, 8:] = IGNORE_INDEX  # padding
    scale = torch.tensor(0.25)
    loss = lm_head_cross_entropy(hidden, weight, labels, scale, chunk_tokens=chunk)
    (grad,) = torch.autograd.grad(loss, hidden)

    reference_hidden = hidden.detach().double().requires_grad_()
    logits = reference_hidden[:, :-1] @ weight.double().t()
    reference = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    (reference * 0.25).backward()
    assert loss.item() == pytest.approx(0.25 * reference.item(), rel=1e-5)
    assert torch.allclose(grad.double(), reference_hidden.grad, rtol=1e-4, atol=1e-6)
    assert grad[:, -1].abs().max() == 0  # the last position predicts nothing


def test_static_shape_collator_pads_rows_and_length_to_fixed_shapes():
    collate = StaticShapeCollator(pad_token_id=0, rows=4, bucket=8)
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": list(range(1, 10)), "labels": [1] * 9}]
    batch = collate(rows)
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 16)
    assert batch["input_ids"][0, :3].tolist() == [5, 6, 7] and (batch["input_ids"][0, 3:] == 0).all()
    assert (batch["labels"][2:] == IGNORE_INDEX).all() and (batch["input_ids"][2:] == 0).all()
    assert collate(rows[:1])["input_ids"].shape == (4, 8)
    with pytest.raises(ValueError, match="a batch of 5 rows"):
        collate(rows * 2 + rows[:1])


def _peft_model(tiny_base_dir):
    from peft import get_peft_model

    params = tiny_lora_params()
    model = load_model(tiny_base_dir, dtype=torch.float32, quant=params.quant)
    model = freeze_base(model, torch.float32, gradient_checkpointing=False)
    torch.manual_seed(0)
    model = get_peft_model(model, adapter_config(params))
    for name, param in model.named_parameters():  # LoRA B starts at zero: give the check gradients to compare
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    return model.eval()


def test_graph_step_gives_the_hf_loss_and_gradients_of_the_masked_batch(tiny_base_dir, tiny_tokenizer, examples):
    """The fixed-shape, mask-free step on the 4-bit base equals the HF model's loss and backward on the batch padded
    to its longest row with its attention mask; two calls without zeroing accumulate, as loss.backward() does."""
    model = _peft_model(tiny_base_dir)
    rows, _ = encode_examples(tiny_tokenizer, examples[:3], None)
    dict_rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    padded = Collator(tiny_tokenizer.pad_token_id)(dict_rows)
    out = model(**padded)
    count = (padded["labels"][:, 1:] != IGNORE_INDEX).sum()
    out.loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    reference = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    steps = GraphedSteps(model, autocast_dtype=None, record=False)
    static = StaticShapeCollator(tiny_tokenizer.pad_token_id, rows=5, bucket=64)(dict_rows)
    assert static["input_ids"].shape[1] > padded["input_ids"].shape[1]  # more padding, and more rows
    loss = steps(static["input_ids"], static["labels"], 1.0 / count)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-4)
    for param, expected in zip(params, reference, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, expected, rtol=1e-3, atol=1e-6)
    steps(static["input_ids"], static["labels"], 1.0 / count)
    for param, expected in zip(params, reference, strict=True):
        torch.testing.assert_close(param.grad, 2 * expected, rtol=1e-3, atol=1e-6)
    model.zero_grad(set_to_none=True)  # the Trainer's zero_grad: the next call starts from zero again
    steps(static["input_ids"], static["labels"], 1.0 / count)
    torch.testing.assert_close(params[0].grad, reference[0], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("grad_accum", "checkpointing"), [(1, False), (2, False), (1, True)], ids=["accum1", "accum2", "checkpointing"]
)
def test_training_through_the_graph_path_follows_the_eager_loss_curve(
    tmp_path, tiny_base_dir, examples, grad_accum, checkpointing
):
    """The Trainer with the graph path's step (not recorded: no GPU here) against the default step, same rows and
    seed (LoRA dropout 0: the two paths pad differently, so dropout masks would differ); with gradient checkpointing
    inside the graph path's step too."""
    rows = examples[:16]
    eager = train_tiny_adapter(tiny_lora_params(grad_accum=grad_accum), rows, tiny_base_dir, tmp_path / "eager")
    graph = train_tiny_adapter(
        tiny_lora_params(grad_accum=grad_accum, cuda_graphs=True, gradient_checkpointing=checkpointing),
        rows,
        tiny_base_dir,
        tmp_path / "graph",
        levers=SpeedLevers(record_graphs=False),
    )
    assert graph["cuda_graphs"] is True and eager["cuda_graphs"] is False
    assert graph["steps"] == eager["steps"] == 4 // grad_accum
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=2e-3)
    assert graph["final_loss"] == pytest.approx(eager["final_loss"], rel=2e-3)


def test_cuda_graphs_off_cuda_auto_says_why_and_true_refuses(tiny_base_dir, capsys):
    model = _peft_model(tiny_base_dir)
    cfg = tiny_lora_params(cuda_graphs="auto").train
    assert graphed_steps_for(model, cfg, torch.float32, compiled=False, micro_batches=500) is None
    assert "training steps run eagerly, not as CUDA graphs: it needs a CUDA GPU" in capsys.readouterr().out
    with pytest.raises(UserError, match="train.cuda_graphs is true but it needs a CUDA GPU"):
        always = tiny_lora_params(cuda_graphs=True).train
        graphed_steps_for(model, always, torch.float32, compiled=False, micro_batches=500)
    assert graphed_steps_for(model, tiny_lora_params(cuda_graphs=False).train, torch.float32, False, 500) is None
    # Checkpointing inside a graph: taken when asked for (torch >= 2.10 records the RNG rewind), not by auto
    checkpointed = tiny_lora_params(cuda_graphs=True, gradient_checkpointing=True).train
    assert isinstance(graphed_steps_for(model, checkpointed, torch.float32, False, 500, record=False), GraphedSteps)
    checkpointed = tiny_lora_params(cuda_graphs="auto", gradient_checkpointing=True).train
    assert graphed_steps_for(model, checkpointed, torch.float32, False, 500, record=False) is None
    assert "graphs with train.gradient_checkpointing are not measured yet" in capsys.readouterr().out


def test_cuda_graphs_auto_records_only_runs_long_enough_to_repay_it(tiny_base_dir, capsys):
    """Where graphs can run (here their arithmetic, record=False), auto takes them from MIN_MICRO_BATCHES on, and
    says so below it; true takes them for a run of any length."""
    model = _peft_model(tiny_base_dir)
    auto = tiny_lora_params(cuda_graphs="auto").train
    short = MIN_MICRO_BATCHES - 1
    assert graphed_steps_for(model, auto, torch.float32, False, short, record=False) is None
    assert f"{short} micro-batches are too few to repay recording CUDA graphs" in capsys.readouterr().out
    assert isinstance(
        graphed_steps_for(model, auto, torch.float32, False, MIN_MICRO_BATCHES, record=False), GraphedSteps
    )
    always = tiny_lora_params(cuda_graphs=True).train
    assert isinstance(graphed_steps_for(model, always, torch.float32, False, 1, record=False), GraphedSteps)
    assert "too few" not in capsys.readouterr().out

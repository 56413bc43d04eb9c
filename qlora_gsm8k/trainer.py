"""The HF Trainer as the train stage runs it: the Trainer subclass (its step eager or replayed as CUDA graphs,
its FLOP count, token-budget batches), the arguments train.* sets, the dataset it reads, and the loss it reports."""

from __future__ import annotations

import torch

from .prompts import IGNORE_INDEX, Encoded
from .train_config import TrainConfig


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Encoded]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


def mean_logged_loss(log_history: list[dict]) -> float | None:
    """Mean training loss per optimizer step from the logged losses (each the mean over its logging
    interval). The log history is part of every checkpoint, so a resumed run reports the same value as an
    uninterrupted one (the Trainer's own train_loss only counts steps run since the resume)."""
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            gap = entry["step"] - previous
            total += entry["loss"] * gap
            steps += gap
            previous = entry["step"]
    return total / steps if steps else None


def trainer_class(trainer_cls, batch_sampler=None, graphed_steps=None, count_parameters_once: bool = True):
    """`count_parameters_once`: the HF Trainer logs total_flos from 6 × tokens × num_parameters(exclude_embeddings=
    True), and recounts the parameters at every step by walking every module (~3.2M named_modules calls over 110
    TinyLlama steps, 8 ms of a 111 ms step under cProfile on the H200: bench/RESULTS.md run 12). Counted once here;
    the same total_flos. False: the Trainer's own per-step count (bench/bench.py's ablation)."""

    class Trainer(trainer_cls):
        _counted_parameters: int | None = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            if graphed_steps is None:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            labels = inputs["labels"]
            # The HF Trainer's normalisation: by the label tokens of the whole accumulated batch when it counted
            # them, else this micro-batch's mean over its accumulation steps.
            if num_items_in_batch is None:
                num_items_in_batch = (labels[:, 1:] != IGNORE_INDEX).sum() * self.current_gradient_accumulation_steps
            return graphed_steps(inputs["input_ids"], labels, 1.0 / num_items_in_batch)

        def floating_point_ops(self, inputs) -> int:
            if not count_parameters_once:
                return super().floating_point_ops(inputs)
            main_input = getattr(self.model, "main_input_name", "input_ids")
            if main_input not in inputs or not hasattr(self.model, "num_parameters"):
                return 0
            if self._counted_parameters is None:
                self._counted_parameters = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main_input].numel() * self._counted_parameters

        def get_train_dataloader(self):
            if batch_sampler is None:
                return super().get_train_dataloader()
            loader = torch.utils.data.DataLoader(
                self.train_dataset, batch_sampler=batch_sampler, collate_fn=self.data_collator
            )
            return self.accelerator.prepare(loader)

    return Trainer


def schedule_arguments(cfg: TrainConfig) -> dict:
    """The Trainer arguments train.* sets (batches, schedule, optimizer numbers), in one place: bench/peers.py gives
    TRL's and Unsloth's trainers these same values."""
    return {
        "per_device_train_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "lr_scheduler_type": cfg.lr_scheduler,
        # transformers 5: a float below 1 is a ratio of the total steps.
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "logging_steps": cfg.logging_steps,
    }

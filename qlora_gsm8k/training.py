"""QLoRA training: pre-flight label checks, the HF Trainer set-up, resumable checkpoints, DVCLive."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from .config import Params, params_as_dict
from .errors import UserError
from .gsm8k import Example
from .modeling import (
    check_target_modules,
    device,
    load_model,
    load_tokenizer,
    lora_config,
    resolve_dtype,
)
from .prompts import IGNORE_INDEX, Collator, Encoded, encode_examples, encode_prompt


class PreflightError(UserError):
    pass


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Encoded]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


def preflight(tokenizer, examples: list[Example], encoded: list[Encoded], collator: Collator) -> None:
    """Decode one collated batch and check what silently ruins SFT runs; name the broken check."""

    def fail(check: str, detail: str) -> None:
        raise PreflightError(f"pre-flight check '{check}' failed: {detail}")

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        fail("pad != eos", f"pad id {tokenizer.pad_token_id}, eos id {tokenizer.eos_token_id}")
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:4]])
    for row, (example, enc) in enumerate(zip(examples, encoded[:4], strict=False)):
        prompt = encode_prompt(tokenizer, example.question)
        n_prompt = len(prompt)
        labels = batch["labels"][row]
        ids = batch["input_ids"][row]
        mask = batch["attention_mask"][row].bool()
        if enc.input_ids[:n_prompt] != prompt:
            fail("same template", "the training prompt differs from the prompt used at evaluation")
        if (labels[:n_prompt] != IGNORE_INDEX).any():
            fail("prompt masked", f"row {row}: prompt tokens carry labels: {tokenizer.decode(ids[:n_prompt])!r}")
        if (labels[~mask] != IGNORE_INDEX).any():
            fail("padding masked", f"row {row}: padding tokens carry labels")
        supervised = labels[labels != IGNORE_INDEX]
        if supervised.numel() == 0:
            fail("response supervised", f"row {row}: no response token has a label")
        if int(supervised[-1]) != tokenizer.eos_token_id:
            fail("EOS supervised", f"row {row}: the last supervised token is {tokenizer.decode(supervised[-1:])!r}")
        if tokenizer.bos_token_id is not None:
            n_bos = int((ids[mask] == tokenizer.bos_token_id).sum())
            if n_bos != 1 or int(ids[mask][0]) != tokenizer.bos_token_id:
                fail("one BOS", f"row {row}: {n_bos} BOS tokens, first token {int(ids[mask][0])}")


def run_fingerprint(params: Params, train_file: Path, base_dir: Path) -> str:
    """Identifies a training run: a checkpoint is only resumed into the run that wrote it."""
    digest = hashlib.sha256()
    cfg = params_as_dict(params)
    digest.update(json.dumps({k: cfg[k] for k in ("lora", "quant", "train")}, sort_keys=True).encode())
    digest.update(train_file.read_bytes())
    digest.update((base_dir / "config.json").read_bytes())
    return digest.hexdigest()[:16]


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not run_dir.is_dir():
        return None
    return get_last_checkpoint(str(run_dir))


def _dvclive_callback(live_dir: Path | None, resume: bool):
    """DVCLive logger that writes only under live_dir: our dvc.yaml declares its plots."""
    if live_dir is None:
        return None
    try:
        from dvclive import Live
        from transformers.integrations import DVCLiveCallback
    except ImportError:
        print("dvclive is not installed: training curves are not logged")
        return None
    live = Live(str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
    return DVCLiveCallback(live=live)


def train_adapter(
    params: Params,
    train_examples: list[Example],
    base_dir: Path,
    adapter_dir: Path,
    checkpoint_root: Path,
    live_dir: Path | None,
    train_file: Path,
) -> dict:
    """Train a LoRA adapter on the 4-bit base; save it (with tokenizer) to adapter_dir. Returns metrics."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    cfg = params.train
    tokenizer = load_tokenizer(base_dir)
    encoded, kept_examples = encode_examples(tokenizer, train_examples, cfg.max_length)
    if not encoded:
        raise UserError(f"every training row is longer than train.max_length={cfg.max_length}; raise it")
    collator = Collator(tokenizer.pad_token_id)
    preflight(tokenizer, kept_examples, encoded, collator)

    model = load_model(base_dir, dtype=resolve_dtype(params.quant.compute_dtype), quant=params.quant)
    check_target_modules(model, params.lora.target_modules)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    model = get_peft_model(model, lora_config(params.lora))

    compute_dtype = resolve_dtype(params.quant.compute_dtype)
    run_dir = checkpoint_root / run_fingerprint(params, train_file, base_dir)
    resume_from = last_checkpoint(run_dir)
    if resume_from:
        print(f"resuming training from {resume_from}")
    callback = _dvclive_callback(live_dir, resume=bool(resume_from))
    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5: a float below 1 is a ratio of the total steps.
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=compute_dtype == torch.bfloat16 and device().type == "cuda",
        fp16=compute_dtype == torch.float16 and device().type == "cuda",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        remove_unused_columns=False,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(encoded),
        data_collator=collator,
        callbacks=[callback] if callback else None,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    if callback is not None:
        callback.live.end()

    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    # The adapter points at the base by a path relative to the repo root, where stages run.
    _set_adapter_base(adapter_dir, base_dir)

    tokens_seen = sum(len(e.input_ids) for e in encoded) * cfg.epochs
    history = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": result.training_loss,
        "final_loss": history[-1] if history else None,
        "steps": trainer.state.global_step,
        "examples": len(encoded),
        "dropped_too_long": len(train_examples) - len(encoded),
        "real_tokens": int(tokens_seen),
        "seconds": seconds,
        "tokens_per_second": tokens_seen / seconds if seconds > 0 else None,
        "resumed": bool(resume_from),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": device().type,
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
    }
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    shutil.rmtree(run_dir, ignore_errors=True)
    return metrics


def _set_adapter_base(adapter_dir: Path, base_dir: Path) -> None:
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_path.write_text(json.dumps(config, indent=2) + "\n")

"""Shared fixtures: the tiny random-weight Llama built in code and GSM8K-format data made in code.
No test needs ../shared or the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from qlora_gsm8k.gsm8k import read_jsonl  # noqa: E402
from qlora_gsm8k.modeling import build_tiny_llama, save_base  # noqa: E402
from qlora_gsm8k.synthetic import write_dataset_dir  # noqa: E402


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    return write_dataset_dir(tmp_path_factory.mktemp("gsm8k"), train_rows=300, test_rows=150)


@pytest.fixture(scope="session")
def examples(dataset_dir):
    return read_jsonl(dataset_dir / "train.jsonl")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """The tiny-llama base saved to disk, as the base stage writes it."""
    model, tokenizer = build_tiny_llama()
    out = tmp_path_factory.mktemp("tiny-base")
    save_base(model, tokenizer, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base_dir):
    from qlora_gsm8k.modeling import load_tokenizer

    return load_tokenizer(tiny_base_dir)

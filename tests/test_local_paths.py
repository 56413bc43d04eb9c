"""A source value that looks like a local path is never sent to the Hub; a missing one names the nearest paths."""

from __future__ import annotations

import pytest

from qlora_gsm8k.config import ModelConfig, model_kind
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.local_paths import looks_like_path, missing_path_error
from qlora_gsm8k.model_sources import LocalDirSource, model_source


@pytest.mark.parametrize(
    ("value", "is_path"),
    [
        ("openai/gsm8k", False),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", False),
        ("ChilleD/SVAMP", False),
        ("gpt2", False),
        ("./models/x", True),
        ("/abs/path", True),
        ("~/data", True),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", True),
        ("rows.JSONL", True),
        ("svamp.json", True),
        ("models/smollm", True),  # models/ exists (made by the test): a typo of a local directory
    ],
)
def test_path_or_hub_id(value, is_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    assert looks_like_path(value) is is_path


def test_a_typo_of_a_local_directory_names_the_nearest_existing_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    (tmp_path / "models" / "tinyllama").mkdir()
    message = str(missing_path_error("model.name", "models/smollm"))
    assert message.startswith("model.name 'models/smollm': no such local file or directory")
    assert "nearest existing: models/smollm2/" in message and "tinyllama" not in message
    assert "\n" not in message
    # deeper: the deepest existing ancestor's entries, closest to the first missing part
    assert "models/smollm2/" in str(missing_path_error("data.source", "models/smolm2/gsm8k"))


def test_the_model_source_is_local_and_missing_not_a_hub_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    assert model_kind("models/smollm") == "local"
    source = model_source(ModelConfig(name="models/smollm"))
    assert isinstance(source, LocalDirSource)
    with pytest.raises(UserError) as err:
        source.config()
    assert "no such local file or directory" in str(err.value) and "Hugging Face Hub" not in str(err.value)

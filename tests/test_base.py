"""The base stage: a local model directory (or Hub snapshot) materialised by copying its weight files."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_gsm8k.config import ModelConfig
from qlora_gsm8k.model_sources import model_source
from qlora_gsm8k.modeling import load_model, load_tokenizer
from qlora_gsm8k.tiny import build_tiny_llama


def _source_with_pad_equal_to_eos(tmp_path):
    """A saved model as many chat models ship: pad token = EOS, weights in two safetensors shards."""
    model, tokenizer = build_tiny_llama(seed=3)
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.eos_token_id
    src = tmp_path / "source"
    model.save_pretrained(src, safe_serialization=True, max_shard_size="100KB")
    tokenizer.save_pretrained(src)
    return model, src


def test_local_base_is_copied_byte_for_byte_with_a_distinct_pad(tmp_path):
    model, src = _source_with_pad_equal_to_eos(tmp_path)
    shards = sorted(src.glob("*.safetensors"))
    assert len(shards) > 1 and (src / "model.safetensors.index.json").is_file()
    out = tmp_path / "base"
    out.mkdir()

    n_params = model_source(ModelConfig(name=str(src))).materialise(out)

    assert n_params == sum(p.numel() for p in model.parameters())
    for shard in shards:
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert (out / "model.safetensors.index.json").read_bytes() == (src / "model.safetensors.index.json").read_bytes()
    tokenizer = load_tokenizer(out)
    assert tokenizer.pad_token_id == tokenizer.unk_token_id != tokenizer.eos_token_id
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["pad_token_id"] == tokenizer.pad_token_id, name
    reloaded = load_model(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def _sentencepiece_model(tmp_path) -> bytes:
    """A small SentencePiece model trained in code: the tokenizer.model file Llama-2-era checkpoints ship."""
    import sentencepiece as spm

    from qlora_gsm8k.synthetic import make_rows

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(row["question"] + "\n" + row["answer"] for row in make_rows(300, seed=7)))
    prefix = tmp_path / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=600,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        byte_fallback=True,
        minloglevel=2,
    )
    return prefix.with_suffix(".model").read_bytes()


def test_a_local_model_with_only_a_sentencepiece_tokenizer_model_loads(tmp_path):
    """Llama-2-era checkpoints ship tokenizer.model and no tokenizer.json; transformers converts it, which
    needs protobuf (requirements.txt): without it the load failed with a misleading 'tiktoken is required'."""
    model, tokenizer = build_tiny_llama(seed=3)
    src = tmp_path / "source"
    model.save_pretrained(src, safe_serialization=True)
    (src / "tokenizer.model").write_bytes(_sentencepiece_model(tmp_path))
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": tokenizer.chat_template,
            }
        )
    )
    assert not (src / "tokenizer.json").exists()

    loaded = model_source(ModelConfig(name=str(src))).tokenizer()

    text = "A baker packs 12 boxes with 6 rolls in each box."
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 5 and loaded.unk_token_id not in ids
    assert loaded.decode(ids) == text
    assert loaded.eos_token_id == 2


@pytest.mark.parametrize(
    ("name", "kind", "pinned"),
    [("tiny-llama", "tiny", False), ("m.gguf", "gguf", False), ("./m", "local", False), ("org/model", "hub", True)],
)
def test_each_model_source_kind_is_one_type(tmp_path, name, kind, pinned):
    """The four kinds of model.name, each one type: what identifies it, and whether it needs a pinned revision."""
    from qlora_gsm8k.model_sources import model_source

    cfg = ModelConfig(name=name, revision="0" * 40)
    source = model_source(cfg)
    assert source.kind == kind and source.needs_pinned_revision is pinned
    assert source.revision() == ("0" * 40 if pinned else None)
    assert set(source.identity()) <= {"revision", "gguf_sha256", "config_sha256"}

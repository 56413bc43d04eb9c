"""The built-in tiny random-weight Llama (`model.name: tiny-llama`) and its tokenizer, built in code: the
pipeline's plumbing runs on it in seconds on a CPU, offline. Its answers are noise."""

from __future__ import annotations

import torch

# Chat template shared by the tiny model; the same shape as TinyLlama-Chat's (Zephyr style).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in code on synthetic word problems (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from .synthetic import make_rows

    corpus = [row["question"] + "\n" + row["answer"] for row in make_rows(2000, seed=1234)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return wrap_tiny_tokenizer(backend)


def wrap_tiny_tokenizer(backend):
    """A trained `tokenizers` backend as a transformers tokenizer with the tiny model's special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_llama(seed: int = 0):
    """A random-weight Llama small enough to train on CPU in seconds, with its own tokenizer."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = build_tiny_llama_config(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )

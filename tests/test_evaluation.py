"""Evaluation numbers on a tiny random-weight Llama: perplexity, greedy generation, scoring, paired stats."""

from __future__ import annotations

import math
import random

import pytest
import torch

from qlora_gsm8k.errors import UserError
from qlora_gsm8k.eval_rows import normalise_rows
from qlora_gsm8k.evaluation import response_nll
from qlora_gsm8k.generation import Generation, generate_answers
from qlora_gsm8k.logits import kl_between, response_logits
from qlora_gsm8k.modeling import load_model, load_tokenizer
from qlora_gsm8k.paired import bootstrap_diff_ci, mcnemar_exact_p, paired_comparison
from qlora_gsm8k.prompts import IGNORE_INDEX, encode_example, encode_prompt
from qlora_gsm8k.rows import Example
from qlora_gsm8k.scoring import repetition_rate, score_generations
from qlora_gsm8k.tiny import build_tiny_llama


def as_eval_rows(examples: list[Example]) -> list:
    """GSM8K rows as the fetch_eval stage writes them: the reference number read from each answer."""
    return normalise_rows("gsm8k", [e.to_json() for e in examples], "test rows")


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    return load_model(tiny_base_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def rows(examples):
    # Different lengths, so batches carry padding.
    return examples[:10]


# --- perplexity -----------------------------------------------------------------------------------


def _hand_nll(model, tokenizer, examples):
    """One example at a time, no padding, float64 log-softmax over response tokens only."""
    total, count, per_sample = 0.0, 0, []
    with torch.no_grad():
        for example in examples:
            enc = encode_example(tokenizer, example, None)
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            nll = 0.0
            n = 0
            for t in range(1, len(enc.input_ids)):
                if enc.labels[t] == IGNORE_INDEX:
                    continue
                nll -= float(logp[t - 1, enc.labels[t]])
                n += 1
            total += nll
            count += n
            per_sample.append(math.exp(nll / n))
    return total, count, per_sample


def test_perplexity_equals_hand_computed(model, tiny_tokenizer, rows):
    total, count, per_sample = _hand_nll(model, tiny_tokenizer, rows)
    result = response_nll(model, tiny_tokenizer, rows, batch_size=4)
    assert result["tokens"] == count
    assert result["tokens"] == sum(encode_example(tiny_tokenizer, e, None).response_tokens for e in rows)
    assert result["mean_nll"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result["examples"] == len(rows) and result["dropped_too_long"] == 0
    assert result["mean_per_sample_perplexity"] == pytest.approx(sum(per_sample) / len(per_sample), rel=1e-5)
    # a random model over a 512-token vocabulary: near-uniform, far from a perfect 1.0
    assert 100 < result["perplexity"] < 5000


def test_perplexity_does_not_depend_on_batch_size_or_padding(model, tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    one = response_nll(model, tok, rows, batch_size=1)
    eight = response_nll(model, tok, rows, batch_size=8)
    assert one["tokens"] == eight["tokens"]
    assert eight["perplexity"] == pytest.approx(one["perplexity"], rel=1e-6)
    assert eight["mean_per_sample_perplexity"] == pytest.approx(one["mean_per_sample_perplexity"], rel=1e-6)
    # What padding holds must not matter either: pad with another token id.
    tok.pad_token = tok.unk_token
    other_pad = response_nll(model, tok, rows, batch_size=8)
    assert other_pad["perplexity"] == pytest.approx(one["perplexity"], rel=1e-6)


def test_perplexity_is_the_token_weighted_mean_not_a_mean_of_batches(model, tiny_tokenizer, rows):
    # Two batches of very different token counts: the corpus value is exp(sum NLL / sum tokens).
    a, b = rows[:1], rows[1:]
    ra = response_nll(model, tiny_tokenizer, a, batch_size=8)
    rb = response_nll(model, tiny_tokenizer, b, batch_size=8)
    both = response_nll(model, tiny_tokenizer, rows, batch_size=8)
    pooled = (ra["mean_nll"] * ra["tokens"] + rb["mean_nll"] * rb["tokens"]) / (ra["tokens"] + rb["tokens"])
    assert both["mean_nll"] == pytest.approx(pooled, rel=1e-6)


def test_perplexity_drops_long_rows_and_refuses_nothing(model, tiny_tokenizer, rows):
    lengths = sorted(len(encode_example(tiny_tokenizer, e, None).input_ids) for e in rows)
    limit = lengths[4]
    result = response_nll(model, tiny_tokenizer, rows, batch_size=4, max_length=limit)
    kept = [e for e in rows if len(encode_example(tiny_tokenizer, e, None).input_ids) <= limit]
    assert result["examples"] == len(kept)
    assert result["dropped_too_long"] == len(rows) - len(kept) > 0
    assert result["tokens"] == _hand_nll(model, tiny_tokenizer, kept)[1]
    with pytest.raises(UserError, match="no rows to score"):
        response_nll(model, tiny_tokenizer, rows, batch_size=4, max_length=lengths[0] - 1)


# --- generation ------------------------------------------------------------------------------------


def test_batched_left_padded_generation_equals_one_by_one(model, tiny_tokenizer, rows):
    questions = [e.question for e in rows[:6]]
    assert len({len(encode_prompt(tiny_tokenizer, q)) for q in questions}) > 1  # padding is exercised
    batched = generate_answers(model, tiny_tokenizer, questions, batch_size=6, max_new_tokens=10)
    single = generate_answers(model, tiny_tokenizer, questions, batch_size=1, max_new_tokens=10)
    assert batched == single
    assert len({g.text for g in single}) > 1  # outputs depend on the question, so order is checked too


def test_generation_matches_a_manual_greedy_loop(model, tiny_tokenizer, rows):
    question = rows[0].question
    ids = torch.tensor([encode_prompt(tiny_tokenizer, question)])
    with torch.no_grad():
        for _ in range(6):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    new = ids[0, -6:].tolist()
    assert tiny_tokenizer.eos_token_id not in new
    (gen,) = generate_answers(model, tiny_tokenizer, [question], batch_size=1, max_new_tokens=6)
    assert gen == Generation(
        text=tiny_tokenizer.decode(new, skip_special_tokens=True).strip(), new_tokens=6, hit_token_cap=True
    )


@pytest.fixture(scope="module")
def chain_model(tiny_tokenizer):
    """A tiny Llama whose greedy continuation of any prompt is '#### 272' then EOS.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding
    and the model is a bigram table: lm_head row b = normalised embedding of a gives a -> b."""
    tok = tiny_tokenizer
    model, _ = build_tiny_llama(seed=1)
    model.eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        normed = emb / emb.pow(2).mean(-1, keepdim=True).add(model.config.rms_norm_eps).sqrt()
        newline = tok.convert_tokens_to_ids("Ċ")
        chain = [newline, *tok.convert_tokens_to_ids(["####", "Ġ27", "2"]), tok.eos_token_id]
        assert len(set(chain)) == len(chain) and tok.unk_token_id not in chain
        model.lm_head.weight.zero_()
        for a, b in zip(chain, chain[1:], strict=False):
            model.lm_head.weight[b] = normed[a] * 10
    assert encode_prompt(tok, "anything")[-1] == newline
    return model


def test_generation_stops_at_eos(chain_model, tiny_tokenizer, rows):
    questions = [e.question for e in rows[:3]]
    gens = generate_answers(chain_model, tiny_tokenizer, questions, batch_size=2, max_new_tokens=20)
    assert gens == [Generation(text="#### 272", new_tokens=4, hit_token_cap=False)] * 3


@pytest.mark.parametrize(
    ("max_new_tokens", "expected"),
    [
        (2, Generation(text="#### 27", new_tokens=2, hit_token_cap=True)),
        # the whole answer but no EOS yet: the cap was hit
        (3, Generation(text="#### 272", new_tokens=3, hit_token_cap=True)),
        # EOS as the very last allowed token: the model stopped, it did not hit the cap
        (4, Generation(text="#### 272", new_tokens=4, hit_token_cap=False)),
        (5, Generation(text="#### 272", new_tokens=4, hit_token_cap=False)),
    ],
)
def test_hit_token_cap_flag(chain_model, tiny_tokenizer, rows, max_new_tokens, expected):
    (gen,) = generate_answers(chain_model, tiny_tokenizer, [rows[0].question], 1, max_new_tokens)
    assert gen == expected


def test_random_model_hits_the_cap(model, tiny_tokenizer, rows):
    gens = generate_answers(model, tiny_tokenizer, [e.question for e in rows[:4]], batch_size=4, max_new_tokens=5)
    for gen in gens:
        assert gen.hit_token_cap == (gen.new_tokens == 5)
        assert gen.hit_token_cap  # a random model practically never picks EOS within 5 tokens


def test_chain_model_outputs_score_as_correct(chain_model, tiny_tokenizer):
    examples = [Example("q1", "x\n#### 272", 0), Example("q2", "x\n#### 27", 1)]
    gens = generate_answers(chain_model, tiny_tokenizer, [e.question for e in examples], 2, 10)
    rows, summary = score_generations(as_eval_rows(examples), gens)
    assert [r["correct_strict"] for r in rows] == [True, False]
    assert summary["exact_match_strict"] == 0.5 and summary["hit_token_cap_rate"] == 0.0


# --- scoring ---------------------------------------------------------------------------------------


def test_score_generations_summary():
    examples = [
        Example("q0", "#### 10", 0),
        Example("q1", "#### 20", 1),
        Example("q2", "#### 30", 2),
        Example("q3", "#### 1,000", 3),
    ]
    gens = [
        Generation("so 10\n#### 10", new_tokens=6, hit_token_cap=False),  # strict + flexible right
        Generation("the answer is 20", new_tokens=5, hit_token_cap=False),  # flexible only: format gap
        Generation("a b c d a b c d a b c d", new_tokens=12, hit_token_cap=True),  # no number, repeats
        Generation("#### 999\nso $1,000.", new_tokens=9, hit_token_cap=False),  # strict wrong, flexible right
    ]
    rows, summary = score_generations(as_eval_rows(examples), gens)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["number_strict"] for r in rows] == ["10", None, None, "999"]
    assert [r["number_flexible"] for r in rows] == ["10", "20", None, "1000"]
    assert [r["correct_strict"] for r in rows] == [True, False, False, False]
    assert [r["correct_flexible"] for r in rows] == [True, True, False, True]
    assert rows[2]["repetition_rate"] == pytest.approx(1 - 4 / 9)  # 9 word 4-grams, 4 distinct
    assert summary == pytest.approx(
        {
            "exact_match_strict": 0.25,
            "exact_match_flexible": 0.75,
            "format_gap": 0.5,
            "format_compliance": 0.5,
            "hit_token_cap_rate": 0.25,
            "repetition_rate": (1 - 4 / 9) / 4,
            "mean_new_tokens": 8.0,
            "examples": 4,
        }
    )


def test_score_generations_needs_one_generation_per_row():
    with pytest.raises(ValueError):
        score_generations(as_eval_rows([Example("q", "#### 1", 0)]), [])


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("", 0.0),
        ("one two three", 0.0),  # shorter than one 4-gram
        ("one two three four", 0.0),
        ("a b c d e f g h", 0.0),
        ("a b c d a b c d", 1 - 4 / 5),  # 5 grams, 4 distinct
        ("x x x x x x x x x x", 1 - 1 / 7),  # 7 identical grams
    ],
)
def test_repetition_rate(text, rate):
    assert repetition_rate(text) == pytest.approx(rate)


# --- paired statistics -----------------------------------------------------------------------------


def _binom_two_sided(k: int, n: int) -> float:
    """Independent reference: sum of P(X = i) over outcomes no more likely than the observed one,
    X ~ Binomial(n, 1/2) (scipy.stats.binomtest's two-sided definition; equal-tails at p = 1/2)."""
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[k] * (1 + 1e-12)))


@pytest.mark.parametrize(
    ("w2r", "r2w", "p"),
    [(5, 0, 0.0625), (0, 5, 0.0625), (10, 10, 1.0), (1, 8, 0.0390625), (8, 1, 0.0390625), (0, 0, 1.0), (0, 1, 1.0)],
)
def test_mcnemar_exact_p_reference_values(w2r, r2w, p):
    assert mcnemar_exact_p(w2r, r2w) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(("w2r", "r2w"), [(3, 9), (12, 4), (0, 7), (20, 31), (6, 6)])
def test_mcnemar_exact_p_matches_binomial_test(w2r, r2w):
    assert mcnemar_exact_p(w2r, r2w) == pytest.approx(_binom_two_sided(w2r, w2r + r2w), rel=1e-9)


def _paired(n_w2r, n_r2w, n_both_right, n_both_wrong, seed=0):
    pairs = (
        [(False, True)] * n_w2r
        + [(True, False)] * n_r2w
        + [(True, True)] * n_both_right
        + [(False, False)] * n_both_wrong
    )
    random.Random(seed).shuffle(pairs)
    return [b for b, _ in pairs], [t for _, t in pairs]


def test_paired_comparison_counts():
    base, tuned = _paired(7, 2, 11, 5)
    result = paired_comparison(base, tuned)
    assert result["flips_wrong_to_right"] == 7
    assert result["flips_right_to_wrong"] == 2
    assert result["both_right"] == 11
    assert result["both_wrong"] == 5
    assert result["accuracy_diff"] == pytest.approx((7 - 2) / 25)
    assert result["mcnemar_p"] == pytest.approx(mcnemar_exact_p(7, 2))
    assert result["accuracy_diff_ci95_low"] <= result["accuracy_diff"] <= result["accuracy_diff_ci95_high"]
    with pytest.raises(ValueError):
        paired_comparison([True, False], [True])


def test_bootstrap_ci_contains_difference_and_is_deterministic():
    base, tuned = _paired(12, 3, 30, 15)
    diff = (sum(tuned) - sum(base)) / len(base)
    low, high = bootstrap_diff_ci(base, tuned, samples=1000, seed=3)
    assert low < diff < high
    assert (low, high) == bootstrap_diff_ci(base, tuned, samples=1000, seed=3)
    # roughly the normal-approximation width of a paired difference: sd of (t - b) / sqrt(n)
    d = [t - b for b, t in zip(base, tuned, strict=True)]
    sd = math.sqrt(sum((x - diff) ** 2 for x in d) / len(d))
    assert (high - low) == pytest.approx(2 * 1.96 * sd / math.sqrt(len(d)), rel=0.25)


def test_bootstrap_ci_degenerate_cases():
    same = [True, False, True]
    assert bootstrap_diff_ci(same, same) == (0.0, 0.0)
    assert bootstrap_diff_ci([], []) == (0.0, 0.0)
    assert bootstrap_diff_ci([False] * 5, [True] * 5) == (1.0, 1.0)


# --- KL used by the merge check --------------------------------------------------------------------


def mean_kl(model_p, model_q, tokenizer, examples, batch_size: int) -> dict:
    """KL(P || Q) of two models on the same examples, as the merge check composes it."""
    return kl_between(
        response_logits(model_p, tokenizer, examples, batch_size),
        response_logits(model_q, tokenizer, examples, batch_size),
    )


def test_mean_kl_zero_for_same_model_and_hand_checked(model, tiny_tokenizer, rows):
    same = mean_kl(model, model, tiny_tokenizer, rows[:3], batch_size=2)
    assert same["mean_kl"] == 0.0 and same["top1_agreement"] == 1.0
    assert same["tokens"] == sum(encode_example(tiny_tokenizer, e, None).response_tokens for e in rows[:3])

    other, _ = build_tiny_llama(seed=7)
    got = mean_kl(model, other, tiny_tokenizer, rows[:3], batch_size=2)
    total, count, same_top1 = 0.0, 0, 0
    with torch.no_grad():
        for example in rows[:3]:
            enc = encode_example(tiny_tokenizer, example, None)
            ids = torch.tensor([enc.input_ids])
            p = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            q = torch.log_softmax(other(input_ids=ids).logits[0].double(), -1)
            for t in range(1, len(enc.labels)):
                if enc.labels[t] != IGNORE_INDEX:
                    total += float((p[t - 1].exp() * (p[t - 1] - q[t - 1])).sum())
                    same_top1 += int(p[t - 1].argmax() == q[t - 1].argmax())
                    count += 1
    assert got["tokens"] == count
    assert got["mean_kl"] == pytest.approx(total / count, rel=1e-6)
    assert got["mean_kl"] > 1e-3
    # batched (padded) against one row at a time: float32 sums in another order can flip a near-tied arg-max
    assert abs(got["top1_agreement"] - same_top1 / count) <= 1 / count and got["top1_agreement"] < 1.0


def test_mean_kl_turns_dropout_off(model, tiny_tokenizer, rows):
    noisy, _ = build_tiny_llama(seed=0)
    noisy.config.attention_dropout = 0.5
    for layer in noisy.model.layers:
        layer.self_attn.attention_dropout = 0.5
    noisy.load_state_dict(model.state_dict())
    noisy.train()
    assert mean_kl(model, noisy, tiny_tokenizer, rows[:2], batch_size=2)["mean_kl"] == pytest.approx(0.0, abs=1e-7)


# --- the perplexity and generate stages --------------------------------------------------------------------


def _stage(module: str, *args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_evaluate_stage_writes_perplexity_and_generations_from_one_load(
    tmp_path, tiny_base_dir, model, tiny_tokenizer, rows
):
    import dataclasses
    import json

    from qlora_gsm8k.eval_rows import write_eval_rows
    from qlora_gsm8k.params_file import parse_params

    write_eval_rows(as_eval_rows(rows[:4]), tmp_path / "eval.jsonl")
    (tmp_path / "params.yaml").write_text(
        "eval:\n  batch_size: 3\n  generation_batch_size: 3\n  max_new_tokens: 5\n  dtype: float32\n"
        "quant:\n  double_quant: true\n"
    )
    result = _stage(
        "stages.evaluate", "--params", str(tmp_path / "params.yaml"), "--set", "gsm8k", "--model", str(tiny_base_dir),
        "--eval", str(tmp_path / "eval.jsonl"), "--label", "base", "--perplexity-out", str(tmp_path / "ppl.json"),
        "--generations-out", str(tmp_path / "gen.jsonl"), "--metrics-out", str(tmp_path / "gen.json"),
        "--info-out", str(tmp_path / "info.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Output piped, as DVC captures it: progress as lines (4 rows, batches of 3), no bar frames ('  0%|…|', which
    # text-mode pipes would show with their carriage returns turned into newlines).
    assert "%|" not in result.stdout + result.stderr
    assert "perplexity: 100% (2/2 batch)" in result.stderr and "generate: 100% (4/4 question)" in result.stderr
    ppl = json.loads((tmp_path / "ppl.json").read_text())["gsm8k"]["base"]
    expected = response_nll(model, tiny_tokenizer, rows[:4], batch_size=1)
    assert ppl["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert ppl["tokens"] == expected["tokens"]
    # Metrics hold numbers only; how the model ran is recorded beside them.
    for metrics_file in ("ppl.json", "gen.json"):
        by_model = json.loads((tmp_path / metrics_file).read_text())["gsm8k"]
        assert all(isinstance(v, (int, float)) for m in by_model.values() for v in m.values()), metrics_file
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["precision"] == "float32"
    assert info["base_4bit"] == {"quant_type": "nf4", "double_quant": True, "dtype": "float32"}

    # The base in 4-bit, with params' quant settings: what bitsandbytes' 4-bit model (training's) scores, and not
    # what the 16-bit base or the other double_quant setting scores. Measured apart on this model: 16-bit 1e-3
    # relative away, double_quant false 3.5e-5; two float32 computations of one model ~1e-7.
    quantized = json.loads((tmp_path / "ppl.json").read_text())["gsm8k"]["base_4bit"]
    assert math.isfinite(quantized["perplexity"]) and quantized["tokens"] == ppl["tokens"]
    quant = parse_params({"quant": {"double_quant": True}}).quant
    as_trained = response_nll(load_model(tiny_base_dir, torch.float32, quant=quant), tiny_tokenizer, rows[:4], 1)
    assert quantized["perplexity"] == pytest.approx(as_trained["perplexity"], rel=1e-6)
    assert quantized["perplexity"] != pytest.approx(ppl["perplexity"], rel=1e-4)
    single = dataclasses.replace(quant, double_quant=False)
    other = response_nll(load_model(tiny_base_dir, torch.float32, quant=single), tiny_tokenizer, rows[:4], 1)
    assert quantized["perplexity"] != pytest.approx(other["perplexity"], rel=1e-5)

    lines = (tmp_path / "gen.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [e.index for e in rows[:4]]
    gens = generate_answers(model, tiny_tokenizer, [e.question for e in rows[:4]], 1, 5)
    assert [json.loads(line)["output"] for line in lines] == [g.text for g in gens]
    summary = json.loads((tmp_path / "gen.json").read_text())["gsm8k"]["base"]
    assert summary["examples"] == 4 and summary["hit_token_cap_rate"] == 1.0


def test_generation_stops_at_every_eos_id_of_the_model(chain_model, tiny_tokenizer, rows):
    """A generation config's list of EOS ids is kept (passing eos_token_id= alone used to replace it)."""
    saved = chain_model.generation_config.eos_token_id
    chain_model.generation_config.eos_token_id = [
        tiny_tokenizer.convert_tokens_to_ids("2"),
        tiny_tokenizer.eos_token_id,
    ]
    try:
        (gen,) = generate_answers(chain_model, tiny_tokenizer, [rows[0].question], 1, max_new_tokens=20)
    finally:
        chain_model.generation_config.eos_token_id = saved
    assert gen == Generation(text="#### 27", new_tokens=3, hit_token_cap=False)


def test_a_models_generation_config_cannot_change_greedy_decoding(chain_model, tiny_tokenizer, rows):
    questions = [e.question for e in rows[:2]]
    ids = torch.tensor([encode_prompt(tiny_tokenizer, questions[0])])
    config = chain_model.generation_config
    saved = config.repetition_penalty
    # as a model's generation_config.json may say; '####' is in the prompt, so the penalty changes the answer
    config.repetition_penalty = 50.0
    try:
        plain = chain_model.generate(
            input_ids=ids, do_sample=False, max_new_tokens=5, pad_token_id=tiny_tokenizer.pad_token_id
        )
        assert tiny_tokenizer.decode(plain[0, ids.shape[1] :], skip_special_tokens=True).strip() != "#### 272"
        gens = generate_answers(chain_model, tiny_tokenizer, questions, batch_size=2, max_new_tokens=5)
    finally:
        config.repetition_penalty = saved
    assert gens == [Generation(text="#### 272", new_tokens=4, hit_token_cap=False)] * 2
    assert chain_model.generation_config.repetition_penalty == saved  # the model's own config is put back


def test_answers_are_cut_at_lm_eval_stop_strings(tiny_tokenizer):
    from qlora_gsm8k.completions import decode_answer

    tokens = tiny_tokenizer("#### 5\n\nQuestion: and 7", add_special_tokens=False)["input_ids"]
    gen = decode_answer(tiny_tokenizer, tokens, {tiny_tokenizer.eos_token_id})
    # scored 5 here as in lm-eval, not 7; a stop string counts as stopping, not as hitting the cap
    assert gen == Generation(text="#### 5", new_tokens=len(tokens), hit_token_cap=False)
    rows, _ = score_generations(as_eval_rows([Example("q", "x\n#### 5", 0)]), [gen])
    assert rows[0]["correct_flexible"] and rows[0]["correct_strict"]

"""The evaluation's sections of params.yaml: the eval sets (`eval_sets`) and how models are evaluated and merged
(`eval`), each validated on its own (qlora_gsm8k.config puts the sections together)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .checks import check_non_negative, check_positive
from .errors import UserError

# Layouts an eval set's source can be in, and whether its rows carry worked solutions (what perplexity and the merge
# check score): gsm8k, JSON lines as openai/grade-school-math ("question", "answer" ending "#### N"); svamp, the
# published SVAMP.json / ChilleD/SVAMP ("Body", "Question", "Answer", "Type"); plain, JSON lines with "question" and
# a numeric "answer" (and an optional "type", broken down in the report like SVAMP's).
LAYOUTS_WITH_SOLUTIONS = {"gsm8k": True, "svamp": False, "plain": False}
# A set's name becomes file and DVC stage names (evaluate_base@<set>, metrics/eval/<set>_base.json): no '-', '/', '@'.
_SET_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


@dataclass(frozen=True)
class EvalSetConfig:
    """One evaluation set (an entry of `eval_sets`): where its rows come from, in which layout, and which of them."""

    # false: its stages write empty outputs without reading the source or loading a model; compare skips it.
    enabled: bool = True
    layout: Literal["gsm8k", "svamp", "plain"] = "plain"
    # A Hub dataset id (at `revision`, with `config`), a local file (all its rows; `split` does not apply) or a
    # local directory holding <split>.jsonl (<split>.json for svamp); null: the training source (data.source,
    # data.config, data.revision), whose overlap with the train slice is then the live question.
    source: str | None = None
    config: str | None = None
    revision: str | None = None
    split: str = "test"
    size: int = 100
    offset: int = 0
    # 0 keeps the source's order; any other value shuffles the split with that seed before slicing.
    shuffle_seed: int = 0

    @property
    def has_solutions(self) -> bool:
        return LAYOUTS_WITH_SOLUTIONS[self.layout]

    def validate(self, name: str) -> None:
        if not _SET_NAME.fullmatch(name):
            raise UserError(
                f"eval_sets.{name}: a set's name may hold only letters, digits and '_' (it names files and DVC "
                "stages), e.g. my_set"
            )
        check_positive(f"eval_sets.{name}.size", self.size)
        check_non_negative(f"eval_sets.{name}.offset", self.offset)
        check_non_negative(f"eval_sets.{name}.shuffle_seed", self.shuffle_seed)


def default_eval_sets() -> dict[str, EvalSetConfig]:
    """GSM8K's held-out test slice (from the training source) and SVAMP, as params.yaml ships them."""
    return {
        "gsm8k": EvalSetConfig(layout="gsm8k"),
        "svamp": EvalSetConfig(
            layout="svamp", source="ChilleD/SVAMP", revision="5e0bf1e5e7c0e9c4bc39180d224f41f3f801b7ef"
        ),
    }


@dataclass(frozen=True)
class EvalConfig:
    # Rows per forward pass when scoring (perplexity, merge check): memory grows with rows x length x vocab.
    batch_size: int = 32
    # Questions generated together: memory is the KV cache (small), and each decoding step costs about the
    # same for 1 row as for hundreds, so large batches are what make generation fast.
    generation_batch_size: int = 256
    max_new_tokens: int = 256
    # Precision both base and tuned are evaluated in; auto = bfloat16 on GPU, float32 on CPU.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Which weights the adapter is merged into (qlora_gsm8k.merging): the dequantized NF4 weights it was trained
    # against, or the original 16-bit ones.
    merge_into: Literal["dequantized", "original"] = "dequantized"
    # Precision the merged weights are saved in; auto = float16 where eval.dtype is 16-bit (a GPU), float32 where
    # it is float32 (a CPU). float16 keeps 3 more mantissa bits than bfloat16 at the same size: on SmolLM2 the
    # saved weights agreed with the trained model on 99.7-99.8% of next tokens, against 98.2-98.5% in bfloat16
    # (bench/MERGE.md); float32 is exact and twice the size.
    merged_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Merge check: the merge stage fails when the merged model does not behave like the 4-bit model it came
    # from, compared in float32 (qlora_gsm8k.merging): KL, and top-1 agreement where the 4-bit model's choice is
    # clear. SmolLM2-135M-Instruct: a dequantized merge saved in float16 gave KL 1.2e-5-1.6e-5, top-1 1.000 there
    # (H100); a merge into the original weights 0.125 / 0.868 over all tokens.
    merge_kl_threshold: float = 0.05
    merge_min_top1_agreement: float = 0.97
    merge_check_size: int = 16
    # The eval set whose worked solutions the merge check scores (an enabled entry of eval_sets in a layout with
    # solutions: gsm8k).
    merge_check_set: str = "gsm8k"
    report_samples: int = 10

    def validate(self) -> None:
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.generation_batch_size", self.generation_batch_size)
        check_positive("eval.max_new_tokens", self.max_new_tokens)
        if not self.merge_kl_threshold > 0:
            raise UserError(f"eval.merge_kl_threshold must be > 0, got {self.merge_kl_threshold}")
        if not 0.0 <= self.merge_min_top1_agreement <= 1.0:
            raise UserError(f"eval.merge_min_top1_agreement must be in [0, 1], got {self.merge_min_top1_agreement}")
        check_positive("eval.merge_check_size", self.merge_check_size)
        check_non_negative("eval.report_samples", self.report_samples)

"""Is run B better than run A? A paired comparison of two finished runs on the same questions, or a leaderboard of
many runs against one baseline.

A run is any git revision, branch, tag or DVC experiment name (`dvc exp show` lists them). Each run's tuned model's
per-question answers are read through DVC from that run's dvc.lock and the cache (nothing runs again), checked to
be the same questions decoded the same way, and compared question by question: wrong→right / right→wrong counts,
the exact McNemar p and a paired bootstrap 95% interval of the accuracy difference. Two accuracies alone cannot say
whether a difference is real: at 1,319 questions, 8.49% vs 7.81% is p = 0.53.

    python tools/compare_runs.py main my-exp                  # B = my-exp against A = main, GSM8K
    python tools/compare_runs.py main my-exp --set svamp --json   # any entry of eval_sets
    python tools/compare_runs.py --leaderboard                # HEAD's experiments against HEAD
    python tools/compare_runs.py --leaderboard exp-a exp-b exp-c --baseline main --out reports/leaderboard

The leaderboard marks the runs that beat the baseline at p < 0.05 after a Holm correction over the number of runs
ranked, and writes leaderboard.md and leaderboard.png (accuracy with its interval per run) to --out.
Exits 2 with one line on stderr when a run cannot be read or compared.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: the package lives beside tools/
    sys.path.insert(0, str(REPO_ROOT))

from qlora_gsm8k.errors import USER_ERROR_EXIT_CODE, UserError, one_line  # noqa: E402
from qlora_gsm8k.io import atomic_write_text  # noqa: E402
from qlora_gsm8k.rows import final_number  # noqa: E402
from qlora_gsm8k.run_tables import leaderboard_markdown, leaderboard_png, pair_text  # noqa: E402
from qlora_gsm8k.runs import (  # noqa: E402
    DECODING_PARAMS,
    Question,
    QuestionsDiffer,
    align_generations,
    compare_generations,
    describe_diff,
    flatten_params,
    jsonl_rows,
    match_questions,
    params_diff,
    rank_against_baseline,
    under,
)

DEFAULT_OUT = "reports/leaderboard"
ALPHA = 0.05


# Runs made before the eval sets were entries of eval_sets kept GSM8K's and SVAMP's tuned answers in these stages.
_STAGES_BEFORE_EVAL_SETS = {"gsm8k": "evaluate@tuned", "svamp": "evaluate_svamp@tuned"}


@dataclass(frozen=True)
class EvalSet:
    """Where a run keeps one eval set's tuned answers: the stage that wrote them (its command in dvc.lock names the
    files, so a rev whose dvc.yaml put them elsewhere is read right) and the params that pick its questions."""

    title: str

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage that wrote the answers, newest layout first."""
        old = _STAGES_BEFORE_EVAL_SETS.get(self.title)
        return (f"evaluate_tuned@{self.title}", *([old] if old else []))

    @property
    def slice_params(self) -> tuple[str, ...]:
        # data: the training source, which a set with `source: null` reads (and, before eval_sets, GSM8K's slice).
        return (f"eval_sets.{self.title}", "data", self.title)

    def question(self, row: dict) -> Question:
        # The reference number (a run from before eval_sets kept GSM8K's worked answer, SVAMP's bare number).
        reference = row.get("number") or final_number(row["answer"])
        return Question(index=row["index"], text=row["question"], reference=str(reference))


def _option(cmd: str, name: str) -> str:
    words = shlex.split(cmd)
    for flag, value in zip(words, words[1:], strict=False):
        if flag == name:
            return value
    raise UserError(f"the recorded command {cmd!r} has no {name}: a dvc.lock this tool does not know")


@dataclass
class Run:
    """One finished run: what the user called it, its commit, its params.yaml and dvc.lock, and DVC's view of its
    files (git-tracked ones from the commit, DVC outputs from the cache by the hashes in its dvc.lock)."""

    name: str
    sha: str
    params: dict[str, Any]
    lock: dict[str, Any]
    fs: Any

    @property
    def label(self) -> str:
        return self.name if self.sha.startswith(self.name) else f"{self.name} ({self.sha[:7]})"

    def stage(self, eval_set: EvalSet) -> dict[str, Any]:
        stages = self.lock.get("stages") or {}
        for name in eval_set.stages:
            if name in stages:
                return stages[name]
        raise UserError(
            f"{self.label} has no finished {eval_set.stages[0]} stage in its dvc.lock: that run did not get so far "
            "(dvc exp run, or dvc repro and commit dvc.lock), or has no eval set of that name"
        )

    def output_text(self, path: str) -> str:
        if not self.fs.exists(path):
            raise UserError(f"{self.label} has no {path}")
        try:
            return self.fs.read_text(path)
        except FileNotFoundError:
            raise UserError(
                f"{self.label}'s {path} is not in the DVC cache: fetch it (dvc pull, or dvc exp pull REMOTE "
                f"{self.name}) or make it again (dvc exp apply {self.name} && dvc repro)"
            ) from None

    def answers(self, eval_set: EvalSet) -> tuple[list[Question], list[dict]]:
        """The questions of `eval_set` this run answered and its tuned model's scored answers (as written)."""
        cmd = self.stage(eval_set)["cmd"]
        questions = [eval_set.question(r) for r in jsonl_rows(self.output_text(_option(cmd, "--eval")))]
        if not questions:
            raise UserError(
                f"{self.label} answered no {eval_set.title} questions (eval_sets.{eval_set.title}.enabled is false "
                "there?)"
            )
        return questions, jsonl_rows(self.output_text(_option(cmd, "--generations-out")))

    def decoding(self, eval_set: EvalSet) -> dict[str, Any]:
        """The decoding params the answers were generated with, as dvc.lock recorded them for the stage."""
        recorded = self.stage(eval_set).get("params", {}).get("params.yaml", {})
        return under(DECODING_PARAMS, flatten_params(recorded))


class Project:
    """The DVC project around the current directory, opened once; runs read through it."""

    def __init__(self) -> None:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        try:
            self.repo = Repo()
        except NotDvcRepoError:
            raise UserError("not inside a DVC project: run this from the project's directory") from None

    def experiments(self) -> list[str]:
        """The experiments of the workspace's commit, as `dvc exp show` lists them."""
        listed = self.repo.experiments.ls()
        return [name or sha for runs in listed.values() for name, sha in runs]

    def run(self, name: str) -> Run:
        from dvc.api import DVCFileSystem
        from dvc.scm import SCMError, resolve_rev

        try:
            sha = resolve_rev(self.repo.scm, name)
        except SCMError:
            raise UserError(
                f"unknown revision {name!r}: no git commit, branch or tag, nor a DVC experiment of that name "
                "(dvc exp list --all-commits shows the experiments)"
            ) from None
        fs = DVCFileSystem(self.repo.root_dir, rev=sha)
        run = Run(name=name, sha=sha, params={}, lock={}, fs=fs)
        for file in ("params.yaml", "dvc.lock"):
            if not fs.exists(file):
                raise UserError(f"{run.label} has no {file}: it holds no finished run (dvc repro, then commit)")
        run.params = yaml.safe_load(fs.read_text("params.yaml")) or {}
        run.lock = yaml.safe_load(fs.read_text("dvc.lock")) or {}
        return run


def compare(a: Run, b: Run, eval_set: EvalSet) -> dict[str, Any]:
    """B against A on `eval_set`, refused (UserError) unless both answered the same questions the same way."""
    decoding = params_diff(a.decoding(eval_set), b.decoding(eval_set))
    if decoding:
        raise UserError(
            f"{a.label} and {b.label} generated their answers with different decoding, so a difference would not be "
            f"the model's: {describe_diff(decoding)}"
        )
    questions_a, generations_a = a.answers(eval_set)
    questions_b, generations_b = b.answers(eval_set)
    differ = params_diff(a.params, b.params)
    try:
        order = match_questions(questions_a, questions_b)
    except QuestionsDiffer as err:
        slice_diff = under(eval_set.slice_params, differ)
        why = f"; their params differ in {describe_diff(slice_diff)}" if slice_diff else ""
        raise UserError(
            f"{a.label} and {b.label} answered different {eval_set.title} questions ({err}){why}: "
            "compare runs of the same eval slice"
        ) from None
    try:
        rows_a = align_generations(order, generations_a, a.label)
        rows_b = align_generations(order, generations_b, b.label)
    except ValueError as err:
        raise UserError(str(err)) from None
    return {
        "set": eval_set.title,
        "a": a.name,
        "b": b.name,
        "a_commit": a.sha,
        "b_commit": b.sha,
        **compare_generations(rows_a, rows_b),
        "params_diff": differ,
    }


def leaderboard(project: Project, names: list[str], baseline_name: str, eval_set: EvalSet, out: Path, as_json: bool):
    explicit = bool(names)
    names = names or project.experiments()
    if not names:
        raise UserError(
            "no experiments on the workspace's commit to rank: run some (dvc exp run --queue -S …, then "
            "python tools/run_queue.py -j 1) or name the revisions"
        )
    baseline = project.run(baseline_name)
    comparisons, skipped = {}, {}
    for name in dict.fromkeys(names):
        try:
            run = project.run(name)
            if run.sha == baseline.sha:
                continue
            comparisons[name] = compare(baseline, run, eval_set)
        except UserError as err:
            # Named runs must all be comparable; of the workspace's experiments, those that are not (another
            # eval slice, outputs gone from the cache) are listed as left out rather than hiding the rest.
            if explicit:
                raise
            skipped[name] = one_line(err)
    if not comparisons:
        raise UserError(
            f"no run to rank against {baseline.label}" + (f": {'; '.join(skipped.values())}" if skipped else "")
        )
    ranked = rank_against_baseline(comparisons, ALPHA)
    markdown = leaderboard_markdown(baseline.label, ranked, skipped, ALPHA)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", markdown)
    leaderboard_png(baseline.label, ranked, out / "leaderboard.png", ALPHA)
    if as_json:
        print(
            json.dumps(
                {"baseline": baseline.name, "baseline_commit": baseline.sha, "runs": ranked, "skipped": skipped},
                indent=2,
            )
        )
    else:
        print(markdown, end="")
        print(f"\nwritten: {out / 'leaderboard.md'}, {out / 'leaderboard.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", metavar="REV", help="A B; with --leaderboard, the runs to rank")
    parser.add_argument("--set", default="gsm8k", help="eval set: a name in eval_sets (default gsm8k)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--leaderboard", action="store_true", help="rank runs against --baseline")
    parser.add_argument("--baseline", default="HEAD", help="leaderboard baseline (default HEAD, the current commit)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"leaderboard.md and .png go here (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.leaderboard and len(args.revs) != 2:
        parser.error("name two runs, A and B (or use --leaderboard)")
    from dvc.exceptions import DvcException

    eval_set = EvalSet(args.set)
    try:
        project = Project()
        if args.leaderboard:
            leaderboard(project, args.revs, args.baseline, eval_set, Path(args.out), args.json)
        else:
            a, b = (project.run(name) for name in args.revs)
            result = compare(a, b, eval_set)
            print(json.dumps(result, indent=2) if args.json else pair_text(result, a.label, b.label))
    except (UserError, DvcException) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())

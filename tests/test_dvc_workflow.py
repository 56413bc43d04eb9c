"""The DVC workflow users come for, exercised with the real `dvc` CLI on the tiny pipeline: no-op repro,
`exp run -S` scoping, the run-cache, queued sweeps, diffs across branches, DVCLive plots, linked large
artifacts and a local remote.

Read-only checks use the session's `reproduced_project`; everything that runs experiments shares one
module-scoped clone of it (`workflow`), whose steps run once, on demand, and put the workspace back on
`main` before they start, so each test can run alone (`-k`) or in any order."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, TINY_PARAMS, TINY_RL, dvc, git, run, stages_run, tool_env
from qlora_gsm8k.synthetic import write_plain_file

pytestmark = pytest.mark.slow

ORIGINAL_R = TINY_PARAMS["lora"]["r"]
UP_TO_DATE = "Data and pipelines are up to date."
TRAIN_CACHED = "Stage 'train' is cached - skipping run, checking out outputs"
# Stages that read only the base model and the eval rows: nothing about LoRA or training may re-run them.
BASE_ONLY = {"fetch", "base", "evaluate_base@gsm8k", "fetch_eval@gsm8k", "fetch_eval@svamp", "evaluate_base@svamp"}
AFTER_TRAIN = {"train", "merge", "evaluate_tuned@gsm8k", "evaluate_tuned@svamp", "compare"}
GSM8K_SIDE = {"fetch", "base", "train", "merge", "fetch_eval@gsm8k", "evaluate_base@gsm8k", "evaluate_tuned@gsm8k"}
CREDENTIAL_KEYS = re.compile(
    r"password|secret|token|access_key|key_id|credential|sas_|connection_string|keyfile|private_key", re.I
)


def output(result) -> str:
    return result.stdout + result.stderr


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(project: Path, path: Path) -> Path:
    """Where DVC 3 keeps a file's content in the project's local cache."""
    md5 = md5_of(path)
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): md5_of(p) for p in sorted(root.rglob("*")) if p.is_file()}


def exp_names(text: str, pattern: str) -> list[str]:
    return re.findall(pattern, text)


def experiments_of(show: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: its data (params, metrics)}."""
    found = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            assert not rev.get("error"), rev["error"]
            found[exp.get("name") or rev.get("name")] = rev["data"]
    return found


def flat_keys(diff: dict) -> dict[str, dict]:
    """{'metrics/x.json': {'tuned.perplexity': {...}}} -> {'metrics/x.json:tuned.perplexity': {...}}."""
    return {f"{file}:{key}": change for file, changes in diff.items() for key, change in changes.items()}


class Workflow:
    """A clone of the reproduced project on which experiment steps run once each, on demand."""

    def __init__(self, project: Path, root: Path):
        self.project = project
        self.root = root
        self._done: dict[str, object] = {}

    def once(self, name: str, step: Callable[[], object]):
        if name not in self._done:
            self._done[name] = step()
        return self._done[name]

    def reset(self) -> None:
        """Back to `main` as committed, outputs checked out from the cache."""
        git(self.project, "checkout", "-q", "-f", "main")
        git(self.project, "reset", "-q", "--hard", "HEAD")
        # What a step added that main lacks (a third eval set's files) would change compare's directory deps.
        git(self.project, "clean", "-fdq")
        dvc(self.project, "checkout", "-f")

    def exp_run(self, *args: str) -> str:
        return output(dvc(self.project, "exp", "run", *args))

    # --- steps --------------------------------------------------------------------------------------------
    def lora_r4(self) -> dict:
        def step():
            self.reset()
            out = self.exp_run("-S", "lora.r=4")
            (name,) = exp_names(out, r"Ran experiment\(s\): (\S+)")
            return {"output": out, "name": name}

        return self.once("lora_r4", step)

    def back_to_original(self) -> str:
        def step():
            r4 = self.lora_r4()
            self.reset()
            # The workspace holds the lora.r=4 run (params, dvc.lock, outputs), as right after that experiment.
            dvc(self.project, "exp", "apply", r4["name"])
            assert yaml.safe_load((self.project / "params.yaml").read_text())["lora"]["r"] == 4
            return self.exp_run("-S", f"lora.r={ORIGINAL_R}")

        return self.once("back_to_original", step)

    def train_size(self) -> str:
        def step():
            self.reset()
            return self.exp_run("-S", "data.train_size=40")

        return self.once("train_size", step)

    def svamp_size(self) -> str:
        def step():
            self.reset()
            return self.exp_run("-S", "eval_sets.svamp.size=4")

        return self.once("svamp_size", step)

    def svamp_off(self) -> dict:
        def step():
            self.reset()
            out = self.exp_run("-S", "eval_sets.svamp.enabled=false")
            metrics = {
                name: json.loads((self.project / "metrics" / name).read_text())
                for name in ("eval/svamp_base.json", "eval/svamp_tuned.json", "compare.json")
            }
            report = (self.project / "reports/comparison.md").read_text()
            return {"output": out, "metrics": metrics, "report": report}

        return self.once("svamp_off", step)

    def own_set(self) -> dict:
        """A third set from a local plain JSON Lines file, added from params alone as the README adds it."""

        def step():
            self.reset()
            rows = write_plain_file(self.root / "mine.jsonl", count=20, seed=5)
            out = self.exp_run("-S", f"+eval_sets.mine={{layout:plain,source:{rows},size:6}}")
            metrics = {
                f"{kind}/{name}": json.loads((self.project / "metrics" / kind / f"{name}.json").read_text())
                for kind in ("eval", "perplexity")
                for name in ("gsm8k_tuned", "svamp_tuned", "mine_base", "mine_tuned")
            }
            compare = json.loads((self.project / "metrics/compare.json").read_text())
            report = (self.project / "reports/comparison.md").read_text()
            status = set(json.loads(dvc(self.project, "status", "--json").stdout))
            return {"output": out, "metrics": metrics, "compare": compare, "report": report, "status": status}

        return self.once("own_set", step)

    def rl_on(self) -> dict:
        """Two GRPO steps on the tiny pipeline, as the README turns RL on (issue 33)."""

        def step():
            self.reset()
            out = self.exp_run("-S", "rl.enabled=true", *(a for s in TINY_RL for a in ("-S", s)))
            from safetensors.torch import load_file

            rl = load_file(self.project / "models/rl_adapter/adapter_model.safetensors")
            sft = load_file(self.project / "models/adapter/adapter_model.safetensors")
            return {
                "output": out,
                "metrics": json.loads((self.project / "metrics/rl.json").read_text()),
                "merge": json.loads((self.project / "metrics/merge.json").read_text()),
                "merged_card": (self.project / "models/merged/README.md").read_text(),
                "rl_card": (self.project / "models/rl_adapter/README.md").read_text(),
                "dtypes": {t.dtype for t in rl.values()},
                "moved": max((rl[k] - sft[k]).abs().max().item() for k in sft),
                "same_keys": set(rl) == set(sft),
                "curves": sorted(p.name for p in (self.project / "dvclive/rl/plots/metrics").glob("*.tsv")),
                "compare": json.loads((self.project / "metrics/compare.json").read_text()),
                "sft_rows": (self.project / "data/generations/gsm8k_sft.jsonl").read_text().splitlines(),
                "report": (self.project / "reports/comparison.md").read_text(),
            }

        return self.once("rl_on", step)

    def rl_param_while_off(self) -> str:
        def step():
            self.reset()
            return self.exp_run("-S", "rl.steps=3")

        return self.once("rl_param_while_off", step)

    def stale_after(self, key: str, value) -> set[str]:
        """The stages `dvc status` calls changed once params.yaml sets `key` to `value` (nothing runs)."""

        def step():
            self.reset()
            params_file = self.project / "params.yaml"
            params = yaml.safe_load(params_file.read_text())
            *sections, name = key.split(".")
            tree = params
            for section in sections:
                tree = tree[section]
            tree[name] = value
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            try:
                return set(json.loads(dvc(self.project, "status", "--json").stdout))
            finally:
                self.reset()

        return self.once(f"stale_after {key}={value}", step)

    def merge_param(self) -> dict:
        def step():
            self.reset()
            params_file = self.project / "params.yaml"
            params = yaml.safe_load(params_file.read_text())
            params["eval"]["merge_check_size"] = 2
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            result = dvc(self.project, "repro", check=False)
            status = output(dvc(self.project, "status"))
            return {"result": result, "status": status}

        return self.once("merge_param", step)

    def queued_sweep(self, *set_params: str) -> dict:
        """Queue one experiment per value (`-S key=a,b`), run the queue, and read the results."""
        self.reset()
        params_before = (self.project / "params.yaml").read_text()
        queued = self.exp_run("--queue", *(arg for value in set_params for arg in ("-S", value)))
        names = exp_names(queued, r"Queued experiment '([^']+)'")
        # As the README runs a queue: tools/run_queue.py starts a worker again when DVC's exits early (a second
        # queue in this project left its last experiment queued with no worker, dvc 3.67.1). Two tiny pipelines
        # take ~5 minutes on 2 idle cores; a loaded box took over 10.
        ran = run(
            [sys.executable, str(REPO_ROOT / "tools" / "run_queue.py"), "-j", "1", "--timeout", "1800"],
            cwd=self.project, env=tool_env(), check=False,
        )  # fmt: skip
        status = output(dvc(self.project, "queue", "status"))
        logs = {n: output(dvc(self.project, "queue", "logs", n, check=False)) for n in names}
        logs["run_queue.py"] = output(ran)
        if ran.returncode == 124:
            dvc(self.project, "queue", "stop", check=False)
        show = json.loads(dvc(self.project, "exp", "show", "--json").stdout)
        csv = dvc(self.project, "exp", "show", "--csv").stdout
        # README: queued runs leave the workspace's params.yaml as it was (a plain `exp run -S` writes into it)
        assert (self.project / "params.yaml").read_text() == params_before
        return {"names": names, "status": status, "logs": logs, "show": show, "csv": csv}

    def sweep(self) -> dict:
        return self.once("sweep", lambda: self.queued_sweep("lora.r=4,8"))

    def method_sweep(self) -> dict:
        return self.once("method_sweep", lambda: self.queued_sweep("peft.method=ia3,prompt"))

    def branches(self) -> dict:
        def step():
            r4 = self.lora_r4()
            self.reset()
            dvc(self.project, "exp", "branch", r4["name"], "r4")
            git(self.project, "checkout", "-q", "r4")
            dvc(self.project, "checkout", "-f")
            try:
                return {
                    "metrics_all": json.loads(dvc(self.project, "metrics", "diff", "main", "--all", "--json").stdout),
                    "metrics": json.loads(dvc(self.project, "metrics", "diff", "main", "--json").stdout),
                    "params": json.loads(dvc(self.project, "params", "diff", "main", "--json").stdout),
                    "plots": json.loads(dvc(self.project, "plots", "diff", "main", "--json").stdout),
                }
            finally:
                self.reset()

        return self.once("branches", step)


@pytest.fixture(scope="module")
def workflow(reproduced_project, tmp_path_factory) -> Workflow:
    """A user's clone of the reproduced project: git clone plus the cache (as after `dvc pull --run-cache`)."""
    root = tmp_path_factory.mktemp("workflow")
    project = root / "project"
    git(root, "clone", "-q", str(reproduced_project), str(project))
    git(project, "config", "user.email", "tests@example.com")
    git(project, "config", "user.name", "tests")
    shutil.copytree(reproduced_project / ".dvc" / "cache", project / ".dvc" / "cache")
    dvc(project, "checkout")
    assert UP_TO_DATE in output(dvc(project, "status"))
    return Workflow(project, root)


# --- no-op -------------------------------------------------------------------------------------------------
def test_noop_repro_runs_nothing_within_3s_of_dvc_startup(reproduced_project):
    project = reproduced_project
    startup, noop = [], []
    for _ in range(3):
        start = time.perf_counter()
        dvc(project, "version")
        startup.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = dvc(project, "repro")
        noop.append(time.perf_counter() - start)
        assert stages_run(output(result)) == set()
        assert UP_TO_DATE in output(result)
    assert git(project, "status", "--porcelain").stdout == "", "a no-op repro changed tracked files"
    # Best of three on a shared 2-core box; measured ~0.7 s over start-up (bench/DVC_NOOP.md).
    overhead = min(noop) - min(startup)
    assert overhead <= 3.0, f"no-op dvc repro took {min(noop):.2f} s, dvc start-up {min(startup):.2f} s"


# --- rl (issue 33) -------------------------------------------------------------------------------------------
def test_rl_is_off_by_default_and_merge_takes_the_sft_adapter(reproduced_project):
    project = reproduced_project
    assert json.loads((project / "metrics/rl.json").read_text()) == {"rl": {"enabled": False}}
    assert sorted(p.name for p in (project / "models/rl_adapter").iterdir()) == ["rl_disabled.json"]
    assert "GRPO" not in (project / "models/merged/README.md").read_text()
    # No SFT-alone model or answers beside the tuned ones, and nothing about them in compare.
    assert not (project / "models/merged/sft").exists()
    assert (project / "data/generations/gsm8k_sft.jsonl").read_text() == ""
    assert json.loads((project / "metrics/eval/gsm8k_sft.json").read_text()) == {}
    assert "sft_vs_tuned" not in json.loads((project / "metrics/compare.json").read_text())["gsm8k"]


def test_rl_on_trains_grpo_steps_and_merge_takes_its_float32_adapter(workflow):
    run = workflow.rl_on()
    ran = stages_run(run["output"])
    # check_params reads every param; nothing before the rl stage (fetch, base, train, the base evaluations) runs.
    assert ran == {"check_params", "rl", "merge", "evaluate_tuned@gsm8k", "evaluate_tuned@svamp", "compare"}, ran
    metrics = run["metrics"]["rl"]
    # Numbers only (settings such as the device sit in models/rl_adapter/training_run.json), so they diff.
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
    assert metrics["enabled"] is True and metrics["steps"] == 2 and metrics["completions_per_step"] == 4
    # Each step's sampling clocked apart from the rest of it (TRL times it only for W&B and the like).
    assert 0 < metrics["sampling_seconds_per_step"] < metrics["seconds_per_step"], metrics
    # TRL would have trained bf16 adapter weights on a 4-bit base; ours stay float32, the same tensors as SFT's, moved.
    assert run["dtypes"] == {torch.float32} and run["same_keys"] and run["moved"] > 0
    assert "Then GRPO (TRL's GRPOTrainer) on the SFT adapter: 2 steps" in run["merged_card"]
    assert "## Then reinforcement learning (GRPO)" in run["rl_card"] and "# QLoRA adapter: GSM8K" in run["rl_card"]
    assert run["merge"]["merge"]["merged"] == 1
    assert {"reward.tsv", "rewards_answer_mean.tsv", "kl.tsv", "completions_mean_length.tsv"} <= set(run["curves"])
    # SFT alone answered the same questions in the same run, and compare pairs it with SFT + RL.
    assert len(run["sft_rows"]) == TINY_PARAMS["eval_sets"]["gsm8k"]["size"]
    paired = run["compare"]["gsm8k"]["sft_vs_tuned"]
    assert paired["examples"] == len(run["sft_rows"]) and 0.0 <= paired["mcnemar_p"] <= 1.0
    assert "**SFT alone → SFT + RL (tuned)**" in run["report"]
    assert "sft_kl_merged_vs_4bit_adapter" in run["merge"]["merge"]


def test_rl_params_while_rl_is_off_rerun_only_the_marker(workflow):
    """rl.* while RL is off: the rl stage re-runs (it reads them) and writes the same marker, so merge and everything
    after it stay as they were."""
    assert stages_run(workflow.rl_param_while_off()) == {"check_params", "rl"}


# --- exp run -S scoping --------------------------------------------------------------------------------------
def test_exp_run_lora_r_reruns_train_and_downstream_only(workflow):
    ran = stages_run(workflow.lora_r4()["output"])
    assert ran >= AFTER_TRAIN, ran
    assert not ran & BASE_ONLY, ran


def test_the_4bit_base_reruns_on_its_quant_settings_only(workflow):
    """evaluate@base also scores the base in 4-bit: a quant setting that changes those weights makes it stale; a
    LoRA setting (the tuned side only) and quant.compute_dtype (the 4-bit base computes in eval.dtype) do not."""
    for key, value in (("quant.double_quant", True), ("quant.quant_type", "fp4")):
        stale = workflow.stale_after(key, value)
        assert {"evaluate_base@gsm8k", "train", "merge"} <= stale, (key, stale)
    for key, value in (("lora.r", ORIGINAL_R // 2), ("quant.compute_dtype", "bfloat16")):
        stale = workflow.stale_after(key, value)
        assert "train" in stale and "evaluate_base@gsm8k" not in stale, (key, stale)


def test_one_sets_params_make_only_that_sets_stages_stale(workflow):
    """Each set's stages list only their own entry of eval_sets: `dvc status` after editing SVAMP's names SVAMP's
    fetch (its evaluations follow once the slice changed) and the stages that read every param, nothing of GSM8K's."""
    assert workflow.stale_after("eval_sets.svamp.size", 5) == {"check_params", "fetch_eval@svamp", "compare"}
    assert workflow.stale_after("eval_sets.gsm8k.offset", 3) == {"check_params", "fetch_eval@gsm8k", "compare"}


def test_exp_run_svamp_size_reruns_only_the_svamp_side(workflow):
    ran = stages_run(workflow.svamp_size())
    assert {"fetch_eval@svamp", "evaluate_base@svamp", "evaluate_tuned@svamp", "compare"} <= ran, ran
    assert not ran & GSM8K_SIDE, ran


def test_svamp_off_writes_empty_results_and_loads_no_model(workflow):
    off = workflow.svamp_off()
    assert "svamp is off" in off["output"] and "svamp base: imports" not in off["output"], off["output"][-3000:]
    assert off["metrics"]["eval/svamp_base.json"] == {"svamp": {"base": {"examples": 0}}}
    assert "svamp" not in off["metrics"]["compare.json"] and "gsm8k" in off["metrics"]["compare.json"]
    assert "## svamp" not in off["report"] and "## gsm8k" in off["report"]
    assert not stages_run(off["output"]) & GSM8K_SIDE


def test_a_third_set_from_a_plain_file_runs_from_params_alone(workflow):
    """`dvc exp run -S '+eval_sets.mine={…}'`: the set's three stages run, nothing of the other sets', and its
    metrics have the same keys, nested the same way, as GSM8K's and SVAMP's."""
    own = workflow.own_set()
    ran = stages_run(own["output"])
    assert ran == {"check_params", "fetch_eval@mine", "evaluate_base@mine", "evaluate_tuned@mine", "compare"}, ran
    metrics = own["metrics"]
    assert metrics["eval/mine_tuned"]["mine"]["tuned"]["examples"] == 6
    layout = {name: set(metrics[f"eval/{name}_tuned"][name]["tuned"]) for name in ("gsm8k", "svamp", "mine")}
    assert layout["gsm8k"] == layout["svamp"] == layout["mine"], layout
    assert metrics["perplexity/mine_base"] == {"mine": {}} and "tuned" in metrics["perplexity/gsm8k_tuned"]["gsm8k"]
    paired = {name: set(own["compare"][name]["paired"]) for name in ("gsm8k", "svamp", "mine")}
    assert paired["gsm8k"] == paired["svamp"] == paired["mine"], paired
    assert "## mine" in own["report"] and own["status"] == set()


def test_exp_run_train_size_refetches_and_retrains_but_keeps_base(workflow):
    ran = stages_run(workflow.train_size())
    assert {"fetch", "train", "merge"} <= ran, ran
    assert "base" not in ran, ran


# --- run-cache -----------------------------------------------------------------------------------------------
def test_run_cache_restores_train_when_params_return(workflow):
    out = workflow.back_to_original()
    ran = stages_run(out)
    assert TRAIN_CACHED in out, out[-3000:]
    assert "train" not in ran and "merge" not in ran, ran
    # Everything git tracks (dvc.lock with the adapter/dvclive/merged hashes, metrics) is back to main's.
    assert git(workflow.project, "status", "--porcelain").stdout == ""


# --- exp show, queued sweep ----------------------------------------------------------------------------------
def test_queued_sweep_runs_both_points_and_exp_show_lists_them(workflow):
    sweep = workflow.sweep()
    names = sweep["names"]
    assert len(names) == 2, sweep
    for name in names:
        assert re.search(rf"{re.escape(name)}\s.*\bSuccess\b", sweep["status"]), (sweep["status"], sweep["logs"])
    exps = experiments_of(sweep["show"])
    assert set(names) <= set(exps), (names, list(exps))
    rs = set()
    for name in names:
        data = exps[name]
        rs.add(data["params"]["params.yaml"]["data"]["lora"]["r"])
        metrics = data["metrics"]
        perplexity = metrics["metrics/perplexity/gsm8k_tuned.json"]["data"]["gsm8k"]["tuned"]["perplexity"]
        assert math.isfinite(perplexity) and perplexity > 1
        generate = metrics["metrics/eval/gsm8k_tuned.json"]["data"]["gsm8k"]["tuned"]
        assert {"exact_match_strict", "exact_match_flexible"} <= set(generate)
    assert rs == {4, 8}
    header = sweep["csv"].splitlines()[0].split(",")
    assert "lora.r" in header and "gsm8k.tuned.perplexity" in header, header
    assert "gsm8k.tuned.exact_match_strict" in header and "gsm8k.paired.mcnemar_p" in header, header
    assert "svamp.tuned.exact_match_flexible" in header and "svamp.paired.mcnemar_p" in header, header
    assert all(name in sweep["csv"] for name in names)


def test_peft_method_sweep_gives_one_row_per_method(workflow):
    """`dvc exp run --queue -S peft.method=…`: each method trains, merges (or, prompt tuning, keeps its adapter)
    and is evaluated; exp show has one row per method with its trainable parameters and paired statistics."""
    sweep = workflow.method_sweep()
    exps = experiments_of(sweep["show"])
    rows = {}
    for name in sweep["names"]:
        log = sweep["logs"].get(name, "")[-3000:]
        assert re.search(rf"{re.escape(name)}\s.*\bSuccess\b", sweep["status"]), (sweep["status"], log)
        assert name in exps, (name, log)
        data = exps[name]
        method = data["params"]["params.yaml"]["data"]["peft"]["method"]
        rows[method] = data["metrics"]
    assert set(rows) == {"ia3", "prompt"}, sweep["logs"]
    for method, metrics in rows.items():
        assert metrics["metrics/train.json"]["data"]["train"]["trainable_params"] > 0
        assert math.isfinite(metrics["metrics/perplexity/gsm8k_tuned.json"]["data"]["gsm8k"]["tuned"]["perplexity"])
        assert "mcnemar_p" in metrics["metrics/compare.json"]["data"]["gsm8k"]["paired"]
        assert metrics["metrics/merge.json"]["data"]["merge"]["merged"] == (0 if method == "prompt" else 1)
    trainable = {m: rows[m]["metrics/train.json"]["data"]["train"]["trainable_params"] for m in rows}
    assert trainable["ia3"] != trainable["prompt"]


# --- diffs across branches -----------------------------------------------------------------------------------
def test_metrics_params_and_plots_diff_across_branches(workflow):
    diffs = workflow.branches()
    assert diffs["params"] == {"params.yaml": {"lora.r": {"old": ORIGINAL_R, "new": 4, "diff": 4 - ORIGINAL_R}}}
    changed = flat_keys(diffs["metrics"])
    assert "metrics/perplexity/gsm8k_tuned.json:gsm8k.tuned.perplexity" in changed, changed
    assert "metrics/perplexity/gsm8k_base.json:gsm8k.base.perplexity" not in changed, "the base did not change"
    assert "metrics/perplexity/gsm8k_base.json:gsm8k.base_4bit.perplexity" not in changed, "nor its 4-bit weights"
    assert "metrics/compare.json:gsm8k.delta.training_perplexity" in changed, changed
    assert "metrics/compare.json:gsm8k.delta.quantization_perplexity" not in changed, changed
    every = flat_keys(diffs["metrics_all"])
    for key in ("tuned.exact_match_strict", "tuned.exact_match_flexible"):
        # The tiny random model scores 0 either way, so these show up (--all) without a change.
        assert f"metrics/eval/gsm8k_tuned.json:gsm8k.{key}" in every, list(every)
        assert f"metrics/eval/svamp_tuned.json:svamp.{key}" in every, list(every)
    loss = diffs["plots"]["data"]["Training loss"][0]
    assert set(loss["revisions"]) == {"workspace", "main"}
    revs = {v["rev"] for v in loss["content"]["data"]["values"]}
    assert revs == {"workspace", "main"}, "main's DVCLive logs must come from the cache"


# --- DVCLive and plots ---------------------------------------------------------------------------------------
def test_dvclive_logs_render_declared_plots_and_leave_dvc_yaml_alone(reproduced_project, tmp_path):
    project = reproduced_project
    yamls = sorted(
        str(p.relative_to(project)) for p in project.rglob("dvc.yaml") if not {".dvc", ".git"} & set(p.parts)
    )
    assert yamls == ["dvc.yaml"], yamls
    assert not (project / "dvclive" / "train" / "dvc.yaml").exists()
    before = git(project, "show", "HEAD~1:dvc.yaml").stdout.encode()
    assert (project / "dvc.yaml").read_bytes() == before, "the run rewrote dvc.yaml"

    steps = json.loads((project / "metrics" / "train.json").read_text())["train"]["steps"]
    every_plot = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    declared = [p for p in every_plot if isinstance(p, dict)]
    images = [p for p in every_plot if isinstance(p, str)]
    assert len(images) == 4 and all(p.endswith(".png") for p in images), images
    for plot in declared:
        ((title, spec),) = plot.items()
        for path in spec["y"]:
            assert (project / path).is_file(), f"plot {title!r} reads {path}, which the run did not write"
    loss_rows = (project / "dvclive/train/plots/metrics/loss.tsv").read_text().splitlines()
    assert loss_rows[0].split("\t") == ["step", "loss"] and len(loss_rows) - 1 == steps, loss_rows

    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert "errors" not in shown, shown.get("errors")
    for plot in declared:
        (title,) = plot.keys()
        rendered = shown["data"][title]
        values = rendered[0]["content"]["data"]["values"]
        assert values, f"plot {title!r} rendered without data"
    loss_values = shown["data"]["Training loss"][0]["content"]["data"]["values"]
    assert len(loss_values) == steps and all(math.isfinite(float(v["loss"])) for v in loss_values)

    html = tmp_path / "plots"
    dvc(project, "plots", "show", "-o", str(html))
    page = (html / "index.html").read_text()
    assert "Training loss" in page
    # The images are embedded as files beside the page: they show offline, where the vega plots stay blank.
    for image in images:
        embedded = html / "static" / f"workspace_{image.replace('/', '_')}"
        assert f'src="static/{embedded.name}"' in page and embedded.read_bytes()[:4] == b"\x89PNG", image
    assert git(project, "status", "--porcelain").stdout == ""


# --- large artifacts: links ----------------------------------------------------------------------------------
def test_large_artifacts_are_read_only_hardlinks_into_the_cache(reproduced_project):
    project = reproduced_project
    cache_type = dvc(project, "config", "cache.type").stdout.strip()
    assert cache_type.split(",")[0] == "hardlink", cache_type
    for rel in ("models/base/model.safetensors", "models/merged/model.safetensors", "models/adapter"):
        paths = [project / rel] if rel.endswith(".safetensors") else sorted((project / rel).rglob("*.safetensors"))
        for path in paths:
            cached = cache_path(project, path)
            assert cached.is_file(), f"{path} is not in the cache"
            assert path.samefile(cached), f"{path} is a copy, not a link to {cached}"
            assert path.stat().st_mode & 0o222 == 0, f"{path} is writable: writing it would corrupt the cache"


def test_stages_rerun_on_read_only_links_when_a_merge_param_changes(workflow):
    step = workflow.merge_param()
    result = step["result"]
    assert result.returncode == 0, output(result)[-4000:]
    ran = stages_run(output(result))
    assert "merge" in ran and "train" not in ran, ran
    assert UP_TO_DATE in step["status"]
    project = workflow.project
    for rel in ("models/base/model.safetensors", "models/merged/model.safetensors"):
        path = project / rel
        cached = cache_path(project, path)
        assert path.samefile(cached)
        # The cache entry is still named by its content: nothing wrote through the link.
        assert md5_of(cached) == cached.parent.name + cached.name


# --- remote --------------------------------------------------------------------------------------------------
def test_push_to_local_remote_then_clone_and_pull(workflow):
    workflow.reset()
    project, root = workflow.project, workflow.root
    remote = root / "remote"
    git(project, "checkout", "-q", "-b", "with-remote")
    try:
        dvc(project, "remote", "add", "-d", "local", str(remote))
        git(project, "commit", "-q", "-am", "DVC remote")
        assert "pushed" in output(dvc(project, "push"))
    finally:
        workflow.reset()

    clone = root / "clone"
    git(root, "clone", "-q", "-b", "with-remote", str(project), str(clone))
    assert "local" in dvc(clone, "remote", "list").stdout
    assert not (clone / "models" / "adapter").exists()
    dvc(clone, "pull")
    for rel in ("models/adapter", "models/merged", "models/base", "dvclive/train"):
        assert tree_digest(clone / rel) == tree_digest(project / rel), rel
    assert (clone / "data" / "train.jsonl").read_bytes() == (project / "data" / "train.jsonl").read_bytes()
    assert UP_TO_DATE in output(dvc(clone, "status"))

    # Credentials never go into .dvc/config (committed): `dvc remote modify --local` writes .dvc/config.local.
    for config in (REPO_ROOT / ".dvc" / "config", clone / ".dvc" / "config"):
        assert not CREDENTIAL_KEYS.search(config.read_text()), config
    dvc(clone, "remote", "add", "store", "s3://example-bucket/qlora-gsm8k")
    dvc(clone, "remote", "modify", "--local", "store", "secret_access_key", "not-a-real-secret")
    assert "not-a-real-secret" not in (clone / ".dvc" / "config").read_text()
    assert "not-a-real-secret" in (clone / ".dvc" / "config.local").read_text()
    git(clone, "check-ignore", "-q", ".dvc/config.local")
    assert "config.local" not in git(clone, "status", "--porcelain").stdout

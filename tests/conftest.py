"""Shared fixtures: the tiny random-weight Llama built in code, GSM8K-format data made in code, and a
throw-away copy of this project as a git + DVC repo for real `dvc` CLI runs.
No test needs ../shared or the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from qlora_gsm8k.modeling import save_base  # noqa: E402
from qlora_gsm8k.rows import read_jsonl  # noqa: E402
from qlora_gsm8k.synthetic import write_dataset_dir, write_svamp_file  # noqa: E402
from qlora_gsm8k.tiny import build_tiny_llama  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a user's clone holds that the pipeline needs; tests/ and run outputs stay behind.
_PROJECT_EXCLUDE = ("tests/", "dvc.lock", "metrics/", "reports/", "bench/", "docs/", ".ci/", "README.md")

# Small enough that `dvc repro` of the whole pipeline takes well under a minute on 2 CPU cores.
TINY_PARAMS = {
    "model": {"name": "tiny-llama"},
    "data": {"train_size": 48},
    "lora": {"r": 8, "alpha": 16},
    "train": {"micro_batch_size": 8, "max_length": 256, "save_steps": 2, "epochs": 1.0},
    "eval": {"batch_size": 6, "max_new_tokens": 24, "merge_check_size": 4, "report_samples": 2},
    "eval_sets": {"gsm8k": {"size": 12}, "svamp": {"size": 8}},
}


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """GSM8K's train.jsonl and test.jsonl, and beside them SVAMP.json in the published SVAMP layout."""
    root = write_dataset_dir(tmp_path_factory.mktemp("gsm8k"), train_rows=300, test_rows=150)
    write_svamp_file(root / "SVAMP.json", count=120)
    return root


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


def train_stage_outputs(out: Path, checkpoints: Path | None = None) -> list[str]:
    """The train stage's output arguments, every output under `out` (checkpoints too, unless given)."""
    return [
        "--adapter-out",
        str(out / "adapter"),
        "--metrics-out",
        str(out / "train.json"),
        "--live-dir",
        str(out / "live"),
        "--checkpoints",
        str(checkpoints or out / "checkpoints"),
    ]


def tiny_lora_params(dropout: float = 0.0, **train):
    """Params for LoRA r8 on q_proj, v_proj and down_proj of the tiny model, float32, a fast constant rate: the
    step tests' recipe; `train` keys over its train section."""
    from qlora_gsm8k.params_file import parse_params

    return parse_params(
        {
            "model": {"name": "tiny-llama"},
            "peft": {"method": "lora"},
            "lora": {"r": 8, "alpha": 16, "dropout": dropout, "target_modules": ["q_proj", "v_proj", "down_proj"]},
            "quant": {"compute_dtype": "float32"},
            "train": {
                "micro_batch_size": 4,
                "max_length": 256,
                "learning_rate": 2e-2,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                "logging_steps": 1,
                **train,
            },
        }
    )


def train_tiny_adapter(params, rows, base_dir: Path, root: Path, **kwargs) -> dict:
    """`train_adapter` on `rows`, with the adapter at root/adapter."""
    from qlora_gsm8k.training import train_adapter

    kwargs.setdefault("live_dir", None)
    return train_adapter(
        params,
        rows,
        base_dir=base_dir,
        adapter_dir=root / "adapter",
        checkpoint_root=root / "checkpoints",
        **kwargs,
    )


def checkout_files(exclude: tuple[str, ...] = ()) -> list[str]:
    """The checkout's files as git sees them (tracked, and untracked but not ignored), less `exclude` prefixes."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [f for f in listed if not f.startswith(exclude) and (REPO_ROOT / f).is_file()]


@functools.cache
def _shipped_params_text() -> str:
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO_ROOT, capture_output=True, text=True)
    if committed.returncode == 0:
        return committed.stdout
    return (REPO_ROOT / "params.yaml").read_text()  # not a git checkout: the file is as shipped


def shipped_params() -> dict:
    """params.yaml as committed at HEAD: the shipped defaults. Never the workspace file: every `dvc exp run -S`
    writes its values into it (the README's experiments too), so a test reading it tests the user's last run."""
    return yaml.safe_load(_shipped_params_text())


def shipped_params_text() -> str:
    return _shipped_params_text()


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """The shipped params with `overrides` (section -> values) as a params file a stage or script can take."""
    path.write_text(dump_params(merge_params(shipped_params(), overrides or {})))
    return path


def readme_experiment_settings() -> list[list[str]]:
    """The `-S key=value` settings of every `dvc exp run` command in the README's code blocks (lines joined at
    `\\`), one list per command."""
    text = (REPO_ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [line.split("&&")[0] for line in text.splitlines() if line.strip().startswith("dvc exp run")]
    return [[words[i + 1] for i, word in enumerate(words) if word == "-S"] for words in map(shlex.split, commands)]


def readme_baseline_commit() -> str:
    """The README's "commit your first run as the baseline" command, as printed (its comment cut off)."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    line = next(line for line in lines if line.startswith("git add params"))
    return line.split("   #", 1)[0].strip()


def apply_settings(raw: dict, settings: list[str]) -> dict:
    """`key=value` settings applied as `dvc exp run -S` applies them to params.yaml. A sweep (`a,b,c`) is only
    queued (`--queue`), which leaves the workspace as it was: skipped."""
    for setting in settings:
        key, value = setting.split("=", 1)
        *sections, name = key.removeprefix("+").split(".")
        if not is_sweep(value):
            mapping = raw
            for section in sections:
                mapping = mapping.setdefault(section, {})
            mapping[name] = hydra_value(value)
    return raw


def is_sweep(value: str) -> bool:
    """`-S key=a,b,c` queues one run per value; a list `[a,b]` or a mapping `{k:v,…}` is one value."""
    return "," in value and not value.startswith(("[", "{"))


def hydra_value(value: str):
    """A `-S` value as DVC's Hydra override reads it: YAML scalars and lists, and `{key:value,…}` mappings (which
    YAML would read as one key, `key:value`)."""
    if value.startswith("{") and value.endswith("}"):
        pairs = (item.split(":", 1) for item in value[1:-1].split(",") if item)
        return {k.strip(): yaml.safe_load(v) for k, v in pairs}
    return yaml.safe_load(value)


def merge_params(base: dict, overrides: dict) -> dict:
    """`overrides` over `base`, mapping by mapping (eval_sets.svamp.size=8 keeps the entry's other keys)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = value
    return merged


def local_sources(dataset_dir: Path) -> dict:
    """Params overrides pointing both data sets at the fixtures (the Hub defaults are unreachable in tests)."""
    return {"data": {"source": str(dataset_dir)}, "eval_sets": {"svamp": {"source": str(dataset_dir / "SVAMP.json")}}}


def imported_modules(stderr: str) -> set[str]:
    """The modules a process imported, from its stderr when run with PYTHONPROFILEIMPORTTIME=1."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


# GRPO small enough for 2 CPU cores: 2 steps of 2 questions x 2 completions of at most 12 tokens.
TINY_RL = (
    "rl.questions=8",
    "rl.steps=2",
    "rl.group_size=2",
    "rl.questions_per_step=2",
    "rl.micro_batch_size=2",
    "rl.max_completion_length=12",
)


def tool_env() -> dict[str, str]:
    """Environment in which `python` and `dvc` are this interpreter's, offline, without a real token."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=kwargs.pop("env", tool_env()), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
            f"--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def dvc(project: Path, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, check=check, **kwargs)


def git(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd=project, check=check)


def stages_run(output: str) -> set[str]:
    """Names of the stages a `dvc repro`/`exp run` actually executed (not skipped, not restored)."""
    return set(re.findall(r"Running stage '([^']+)'", output))


class _ParamsDumper(yaml.SafeDumper):
    """Writes None as an empty value, as DVC's own rewrite of params.yaml (`exp run -S`) does: `null` would come
    back from a round trip as an empty value, and the file would differ from the commit."""


_ParamsDumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))


def dump_params(params: dict) -> str:
    return yaml.dump(params, Dumper=_ParamsDumper, sort_keys=False)


def make_project(root: Path, dataset_dir: Path, overrides: dict | None = None) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, with tiny params, committed."""
    project = root / "project"
    for rel in checkout_files(_PROJECT_EXCLUDE):
        dest = project / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest)
    params = merge_params(shipped_params(), TINY_PARAMS)
    params = merge_params(params, local_sources(dataset_dir))
    params = merge_params(params, overrides or {})
    (project / "params.yaml").write_text(dump_params(params))
    commit_as_new_repo(project, "project")
    return project


def commit_as_new_repo(path: Path, message: str) -> None:
    """`path` as a fresh git repository on branch main with everything in it committed."""
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "tests@example.com")
    git(path, "config", "user.name", "tests")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)


@pytest.fixture
def project(tmp_path, dataset_dir) -> Path:
    return make_project(tmp_path, dataset_dir)


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, dataset_dir) -> Path:
    """One full `dvc repro` of the tiny pipeline, committed, shared by the tests that only read it."""
    project = make_project(tmp_path_factory.mktemp("reproduced"), dataset_dir)
    result = dvc(project, "repro")
    # The README's baseline commit, as printed, then what git still sees (test_pipeline asserts it is nothing)
    run(["bash", "-c", readme_baseline_commit()], cwd=project)
    status = git(project, "status", "--porcelain", "--untracked-files=all").stdout
    project.joinpath(".status-after-baseline.txt").write_text(status)
    project.joinpath(".repro-output.txt").write_text(result.stdout + result.stderr)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "repro")
    return project

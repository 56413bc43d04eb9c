"""Security: safetensors only, never remote code, pinned and recorded revisions, the Hub token from the
environment only and never written anywhere."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, dvc, make_project, run, shipped_params, tool_env
from qlora_gsm8k.config import ModelConfig
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.params_file import parse_params

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the stage scripts, imported as modules

FAKE_TOKEN = "hf_FAKEtoken1234567890"
SOURCE_FILES = sorted([*(REPO_ROOT / "qlora_gsm8k").glob("*.py"), *(REPO_ROOT / "stages").glob("*.py")])
COMMIT = "[0-9a-f]{40}"


# --- the code: no remote code, no pickles --------------------------------------------------------------------------


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    if isinstance(func, ast.Name):
        return func.id
    return "?"


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_ast_scan_covers_the_package_and_the_stages():
    names = {p.name for p in SOURCE_FILES}
    assert {"modeling.py", "training.py", "merging.py", "base.py", "train.py"} <= names


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trust_remote_code_is_never_enabled(path):
    for call in _calls(path):
        value = _keyword(call, "trust_remote_code")
        if value is not None:
            assert isinstance(value, ast.Constant) and value.value is False, (
                f"{path.name}:{call.lineno}: trust_remote_code must be the literal False"
            )
        for keyword in call.keywords:
            # no trust_remote_code smuggled in through **{...}
            if keyword.arg is None and isinstance(keyword.value, ast.Dict):
                keys = [k.value for k in keyword.value.keys if isinstance(k, ast.Constant)]
                assert "trust_remote_code" not in keys, f"{path.name}:{call.lineno}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                    assert isinstance(value, ast.Constant) and value.value is False, f"{path.name}:{node.lineno}"


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_model_weights_load_from_safetensors_only(path):
    for call in _calls(path):
        name = _name(call.func)
        # GGUF, like safetensors, is a tensor format that runs no code when read.
        if name.startswith("AutoModel") and name.endswith(".from_pretrained") and not _keyword(call, "gguf_file"):
            value = _keyword(call, "use_safetensors")
            assert isinstance(value, ast.Constant) and value.value is True, (
                f"{path.name}:{call.lineno}: {name} must pass use_safetensors=True"
            )
        if name == "torch.load":
            value = _keyword(call, "weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path.name}:{call.lineno}"
        if name.endswith("save_pretrained"):
            value = _keyword(call, "safe_serialization")
            assert value is None or (isinstance(value, ast.Constant) and value.value is True), (
                f"{path.name}:{call.lineno}: never safe_serialization=False"
            )
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, f"{path.name} imports a pickle library"


def test_the_token_is_read_from_the_environment_in_one_place():
    readers = []
    for path in SOURCE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
                readers.append(path.name)
    assert readers == ["sources.py"]
    assert 'os.environ.get("HF_TOKEN")' in (REPO_ROOT / "qlora_gsm8k" / "sources.py").read_text()
    for path in SOURCE_FILES:
        for call in _calls(path):
            value = _keyword(call, "token")
            if value is not None:
                assert isinstance(value, ast.Call) and _name(value.func) == "hf_token", f"{path.name}:{call.lineno}"


def test_the_hub_loader_gets_the_env_token(monkeypatch):
    from qlora_gsm8k.sources import _hub_kwargs

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = _hub_kwargs(ModelConfig())
    assert kwargs["token"] == FAKE_TOKEN and kwargs["revision"] == ModelConfig().revision
    assert kwargs["local_files_only"] is True  # offline: the cache only
    monkeypatch.delenv("HF_TOKEN")
    assert _hub_kwargs(ModelConfig())["token"] is None


# --- at run time: a pickle or custom code in a model directory is refused, never run ---------------------------------


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_base_dir):
    from qlora_gsm8k.model_sources import check_model_source, model_source

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tiny_base_dir / name).read_bytes())
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    cfg = ModelConfig(name=str(model_dir))
    (tmp_path / "out").mkdir()
    for load in (lambda c: model_source(c).materialise(tmp_path / "out"), lambda c: check_model_source(c, ["q_proj"])):
        with pytest.raises(UserError, match=r"has no \*\.safetensors weights; only safetensors are loaded"):
            load(cfg)
    assert not marker.exists()


def test_custom_model_code_is_never_run(tmp_path):
    from qlora_gsm8k.model_sources import check_model_source

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    marker = tmp_path / "remote-code-ran"
    (model_dir / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "configuration_evil.EvilModel",
                },
            }
        )
    )
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, model_dir / "model.safetensors")  # valid weights: the config is what is refused
    with pytest.raises(UserError, match="cannot read the config of model"):
        check_model_source(ModelConfig(name=str(model_dir)), ["q_proj"])
    assert not marker.exists()


# --- revisions: pinned in params.yaml, recorded in the outputs -------------------------------------------------------


def test_params_pin_hub_revisions_to_commit_hashes():
    import re

    params = shipped_params()
    assert re.fullmatch(COMMIT, params["model"]["revision"])
    assert re.fullmatch(COMMIT, params["data"]["revision"])
    assert re.fullmatch(COMMIT, params["eval_sets"]["svamp"]["revision"])


def test_unpinned_hub_revisions_are_refused(tmp_path):
    from stages.check_params import check_revisions

    with pytest.raises(UserError, match=r"model.revision must be a full 40-character commit hash .* got 'main'"):
        check_revisions(parse_params({"model": {"name": "org/model", "revision": "main"}}))
    with pytest.raises(UserError, match=r"data.revision must be a full 40-character commit hash"):
        check_revisions(parse_params({"data": {"source": "openai/gsm8k", "revision": "v1.0"}}))
    # local sources have no revision to pin
    check_revisions(parse_params({"model": {"name": "tiny-llama", "revision": "main"}, "data": {"source": "/d"}}))
    check_revisions(parse_params({"model": {"name": str(tmp_path)}, "data": {"source": str(tmp_path)}}))


def test_base_provenance_records_the_revision_or_the_file_hashes(tiny_base_dir):
    from qlora_gsm8k.model_sources import model_source

    hub = model_source(ModelConfig(name="org/model", revision="a" * 40)).provenance()
    assert hub == {"name": "org/model", "revision": "a" * 40, "kind": "hub"}
    local = model_source(ModelConfig(name=str(tiny_base_dir))).provenance()
    assert local["kind"] == "local" and local["revision"] is None
    weights = tiny_base_dir / "model.safetensors"
    assert local["sha256"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.slow
def test_outputs_record_provenance_and_hold_only_safetensors(reproduced_project, dataset_dir):
    project = reproduced_project
    base = json.loads((project / "models/base/provenance.json").read_text())
    assert base["name"] == "tiny-llama" and base["kind"] == "tiny"
    # The train split (fetch) and GSM8K's test split (fetch_eval@gsm8k): each the file read and its digest.
    for record, name in (("data/source.json", "train.jsonl"), ("data/eval_source/gsm8k.json", "test.jsonl")):
        source = json.loads((project / record).read_text())
        assert source["kind"] == "local" and source["source"] == str(dataset_dir / name)
        assert source["sha256"] == hashlib.sha256((dataset_dir / name).read_bytes()).hexdigest()
    for model in ("base", "adapter", "merged"):
        files = [p.name for p in (project / "models" / model).iterdir()]
        assert any(f.endswith(".safetensors") for f in files), model
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], model


# --- the token: from the environment only, never written ---------------------------------------------------------


def test_a_token_in_params_is_refused_without_echoing_it(tmp_path):
    raw = shipped_params()
    token = "hf_" + "A1b2C3d4" * 4
    raw["model"]["revision"] = token
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run(
        [sys.executable, "-m", "stages.check_params", "--params", str(params_file), "--out", str(tmp_path / "ok")],
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "looks like a Hugging Face token" in result.stderr and "HF_TOKEN environment variable" in result.stderr
    line_no = next(i for i, line in enumerate(params_file.read_text().splitlines(), 1) if token in line)
    assert f"{params_file}:{line_no} holds" in result.stderr
    assert token not in result.stdout + result.stderr


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if needle in path.read_bytes():
                hits.append(str(path.relative_to(root)))
    return hits


@pytest.mark.slow
def test_hf_token_never_reaches_any_file_or_log(tmp_path, dataset_dir, tiny_base_dir, examples, monkeypatch):
    env = tool_env()
    env["HF_TOKEN"] = FAKE_TOKEN
    project = make_project(tmp_path, dataset_dir)
    result = dvc(project, "repro", env=env)
    # the token must not be needed to reach any verdict: every stage ran
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "compare" in lock["stages"]
    captured = result.stdout + result.stderr
    dvc(project, "metrics", "show", env=env)
    dvc(project, "exp", "show", env=env)

    # Checkpoints exist only while a run is unfinished: keep one run's, with the token set, and search it too.
    from qlora_gsm8k.training import train_adapter

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    params = parse_params({"model": {"name": "tiny-llama"}, "train": {"save_steps": 1, "max_length": 256}})
    checkpoints = project / "checkpoints"
    train_adapter(
        params,
        examples[:8],
        base_dir=tiny_base_dir,
        adapter_dir=tmp_path / "adapter",
        checkpoint_root=checkpoints,
        live_dir=tmp_path / "live",
        keep_checkpoints=True,
    )
    assert list(checkpoints.glob("*/checkpoint-*/trainer_state.json"))

    needle = FAKE_TOKEN.encode()
    assert needle not in captured.encode()
    for root in (project, tmp_path / "adapter", tmp_path / "live"):
        assert _files_holding(root, needle) == [], f"the token was written under {root}"
    # the search itself works
    (tmp_path / "canary.txt").write_text(FAKE_TOKEN)
    assert _files_holding(tmp_path, needle) == ["canary.txt"]

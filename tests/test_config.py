"""params.yaml parsing: typed, validated, and failing with one line that names the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import apply_settings, is_sweep, readme_experiment_settings, shipped_params, shipped_params_text
from qlora_gsm8k.config import Params
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.params_file import load_params, params_as_dict, parse_params


def _raw() -> dict:
    return shipped_params()


def _with(section: str, key: str, value) -> dict:
    raw = _raw()
    raw.setdefault(section, {})[key] = value
    return raw


def test_shipped_params_load_and_match_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text(shipped_params_text())
    params = load_params(tmp_path / "params.yaml")
    parsed = params_as_dict(params)
    raw = _raw()
    assert set(raw) == set(parsed)
    for section, values in raw.items():
        for key, value in values.items():
            assert parsed[section][key] == value, f"{section}.{key}"
    # The committed params.yaml holds every key (a user's experiments may change values, not the keys)
    assert all(set(raw[section]) == set(parsed[section]) for section in parsed)
    assert isinstance(params.train.epochs, float)


def test_empty_params_are_the_defaults():
    assert parse_params({}) == Params()
    assert parse_params(None) == Params()
    assert parse_params({"lora": None}) == Params()


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"lora": {"rank": 8}}, ["lora.rank", "allowed lora: r, alpha, dropout, target_modules"]),
        ({"trian": {}}, ["trian", "allowed sections: model, data, prompt, peft, lora, quant, train, eval, eval_sets"]),
        ({"eval": {"batchsize": 4}}, ["eval.batchsize", "batch_size"]),
        # YAML keys of mixed types (an int and a string) must still give the one-line error
        ({"lora": {1: 2, "rank": 8}}, ["unknown param lora.1", "allowed lora: r"]),
        (
            {"lora": {"rank": 8}},
            ["unknown param lora.rank (did you mean lora.r?)", "remove it from params.yaml", "-S +lora.rank=..."],
        ),
    ],
)
def test_unknown_key_names_it_and_the_allowed_ones(raw, needles):
    with pytest.raises(UserError) as err:
        parse_params(raw)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("lora", "r", "16", "lora.r must be int"),
        ("lora", "r", 16.0, "lora.r must be int"),
        ("lora", "r", True, "lora.r must be int"),  # bool is an int subclass in Python; not here
        ("train", "micro_batch_size", False, "train.micro_batch_size must be int"),
        ("train", "learning_rate", "fast", "train.learning_rate must be a finite number"),
        ("train", "learning_rate", True, "train.learning_rate must be a finite number"),
        ("train", "learning_rate", float("inf"), "train.learning_rate must be a finite number"),
        ("train", "weight_decay", float("nan"), "train.weight_decay must be a finite number"),
        ("train", "weight_decay", ".nan", "train.weight_decay must be a finite number"),
        ("train", "gradient_checkpointing", "yes", "train.gradient_checkpointing must be bool"),
        ("train", "gradient_checkpointing", 1, "train.gradient_checkpointing must be bool"),
        ("train", "lr_scheduler", "cosine_warm", "train.lr_scheduler must be one of 'cosine'"),
        ("quant", "quant_type", "int8", "quant.quant_type must be one of 'nf4', 'fp4'"),
        ("eval", "dtype", "fp16", "eval.dtype must be one of"),
        ("lora", "target_modules", "q_proj", "lora.target_modules must be a list of str"),
        ("lora", "target_modules", ["q_proj", 3], "lora.target_modules[1] must be str"),
        ("model", "name", "", "model.name must be str"),
        ("data", "train_size", None, "data.train_size must be int"),
    ],
)
def test_wrong_types(section, key, value, needle):
    with pytest.raises(UserError, match="^" + needle.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        parse_params(_with(section, key, value))


def test_section_must_be_a_mapping():
    with pytest.raises(UserError, match="lora must be a mapping"):
        parse_params({"lora": [1, 2]})
    with pytest.raises(UserError, match="params must be a mapping"):
        parse_params([1])


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("lora", "r", 0, "lora.r must be > 0"),
        ("lora", "r", -4, "lora.r must be > 0"),
        ("lora", "alpha", 0, "lora.alpha must be > 0"),
        ("lora", "dropout", 1.0, "lora.dropout must be in [0, 1)"),
        ("lora", "dropout", -0.1, "lora.dropout must be in [0, 1)"),
        ("lora", "target_modules", [], "lora.target_modules must name at least one"),
        ("train", "learning_rate", 0, "train.learning_rate must be > 0"),
        ("train", "learning_rate", -1e-4, "train.learning_rate must be > 0"),
        ("train", "epochs", 0, "train.epochs must be > 0"),
        ("train", "micro_batch_size", 0, "train.micro_batch_size must be > 0"),
        ("train", "grad_accum", 0, "train.grad_accum must be > 0"),
        ("train", "max_length", 8, "train.max_length must be >= 16"),
        ("train", "warmup_ratio", 1.0, "train.warmup_ratio must be in [0, 1)"),
        ("train", "weight_decay", -0.1, "train.weight_decay must be >= 0"),
        ("train", "max_grad_norm", -1.0, "train.max_grad_norm must be >= 0"),
        ("train", "save_steps", 0, "train.save_steps must be > 0"),
        ("data", "train_size", 0, "data.train_size must be > 0"),
        ("data", "train_offset", -1, "data.train_offset must be >= 0"),
        ("eval", "batch_size", 0, "eval.batch_size must be > 0"),
        ("eval", "max_new_tokens", 0, "eval.max_new_tokens must be > 0"),
        ("eval", "merge_kl_threshold", 0, "eval.merge_kl_threshold must be > 0"),
        ("eval", "merge_check_size", 0, "eval.merge_check_size must be > 0"),
        ("eval", "report_samples", -1, "eval.report_samples must be >= 0"),
    ],
)
def test_ranges(section, key, value, needle):
    with pytest.raises(UserError) as err:
        parse_params(_with(section, key, value))
    assert str(err.value).startswith(needle)


@pytest.mark.parametrize(("value", "expected"), [("2e-4", 2e-4), ("3E-5", 3e-5), (1, 1.0), ("0.001", 1e-3)])
def test_float_accepts_yaml_strings_and_ints(value, expected):
    params = parse_params(_with("train", "learning_rate", value))
    assert isinstance(params.train.learning_rate, float)
    assert params.train.learning_rate == pytest.approx(expected)


def test_yaml_reads_2e_minus_4_as_a_string_and_we_accept_it(tmp_path):
    text = shipped_params_text().replace("learning_rate: 0.0002", "learning_rate: 2e-4")
    assert "learning_rate: 2e-4" in text
    assert yaml.safe_load(text)["train"]["learning_rate"] == "2e-4"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.learning_rate == pytest.approx(2e-4)


def test_ints_where_floats_expected_become_floats():
    params = parse_params({"train": {"epochs": 2, "weight_decay": 0}, "lora": {"dropout": 0}})
    assert params.train.epochs == 2.0 and isinstance(params.train.epochs, float)
    assert isinstance(params.lora.dropout, float)


def test_load_params_file_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML") as err:
        load_params(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"data": {"train_size": 1}},  # one step, and it is warmup
        {"train": {"epochs": 0.0001}},
        {"data": {"train_size": 16}, "train": {"micro_batch_size": 16, "warmup_ratio": 0.5}},
    ],
)
def test_a_run_that_cannot_train_is_refused(raw):
    with pytest.raises(UserError, match="all of them warmup"):
        parse_params(raw)


def test_optimizer_steps_count_as_the_trainer_does():
    from qlora_gsm8k.train_config import TrainConfig, optimizer_steps

    assert optimizer_steps(200, TrainConfig()) == (13, 1)  # 13 micro-batches of 16, 3% warmup rounds up to 1
    assert optimizer_steps(200, TrainConfig(micro_batch_size=8, grad_accum=2, epochs=2.0)) == (26, 1)
    assert optimizer_steps(7473, TrainConfig(micro_batch_size=32, epochs=3.0)) == (702, 22)
    assert optimizer_steps(1, TrainConfig(warmup_ratio=0.0)) == (1, 0)  # one real step: allowed


@pytest.mark.parametrize("key", ["data.config", "model.name", "eval_sets.svamp.source"])
def test_string_params_are_bounded(key):
    """Each param is copied into dvc.lock and every experiment: a 1 MB string would bloat them all."""
    *sections, name = key.split(".")

    def params(value: str) -> dict:
        raw = tree = {"eval_sets": {"gsm8k": {"layout": "gsm8k"}}}
        for section in sections:
            tree = tree.setdefault(section, {})
        tree[name] = value
        return raw

    parse_params(params("x" * 1024))
    with pytest.raises(UserError, match=rf"{key} is 5,000 characters long; at most 1024"):
        parse_params(params("x" * 5000))


def test_prompt_system_is_text_or_null():
    assert parse_params({}).prompt.system is None
    assert parse_params({"prompt": {"system": None}}).prompt.system is None
    assert parse_params({"prompt": {"system": "Be brief."}}).prompt.system == "Be brief."
    with pytest.raises(UserError, match="prompt.system must be str or null, got ''"):
        parse_params({"prompt": {"system": ""}})


def test_shipped_params_survive_dvcs_rewrite_byte_for_byte(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel; a value it re-spells (`null` becomes an empty value)
    would leave params.yaml modified after returning to the original params (the run-cache test saw it)."""
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    copy.write_text(shipped_params_text())
    with modify_yaml(str(copy)) as data:
        data["lora"]["r"] = data["lora"]["r"]
    assert copy.read_text() == shipped_params_text()


def test_every_readme_experiment_is_valid_params():
    """A preset users copy from the README must pass the params check (a renamed key would fail here, not on a GPU
    an hour into a run). Sweeps (`a,b,c`) are checked value by value."""
    experiments = readme_experiment_settings()
    assert any("peft.method=rslora" in e and "data.train_size=7473" in e for e in experiments)  # the preset
    for settings in experiments:
        raw = apply_settings(_raw(), settings)
        parse_params(raw)
        for setting in settings:
            key, values = setting.split("=", 1)
            if is_sweep(values):
                for value in values.split(","):
                    parse_params(apply_settings(copy.deepcopy(raw), [f"{key}={value}"]))

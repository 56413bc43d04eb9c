"""The four places a base model comes from, one type each: the built-in tiny-llama, a local GGUF file, a local model
directory, a Hub id at a pinned revision. Each says what identifies it (for the model check's cache and the base's
provenance) without torch; reading its config, its tokenizer or writing the base stage's copy imports
`sources`, where the loading lives, only when asked."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from .config import ModelConfig, model_kind
from .errors import UserError
from .io import file_sha256


class ModelSource:
    kind: ClassVar[str]
    # A Hub repository can move: only its pinned commit identifies the weights.
    needs_pinned_revision: ClassVar[bool] = False

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @property
    def path(self) -> Path:
        return Path(self.cfg.name).expanduser()

    def revision(self) -> str | None:
        """The pinned Hub revision the weights are read at; None where the source has no revision."""
        return None

    def identity(self) -> dict:
        """What identifies these weights beyond the name (a revision, a file's sha256), cheap to compute: the model
        check is skipped while it is unchanged."""
        return {}

    def provenance(self) -> dict:
        """Where the base stage's weights came from, as recorded beside them (provenance.json)."""
        return {"name": self.cfg.name, "revision": self.revision(), "kind": self.kind}

    def config(self):
        """The architecture config, without loading weights."""
        raise NotImplementedError

    def tokenizer(self):
        """The tokenizer as the base stage will save it, without the weights."""
        raise NotImplementedError

    def materialise(self, out_dir: Path) -> int:
        """Write the base to out_dir as every later stage reads it; returns its parameter count."""
        raise NotImplementedError


class TinySource(ModelSource):
    """Built in code from a fixed seed: nothing to identify but the name."""

    kind = "tiny"

    def config(self):
        from .tiny import build_tiny_llama_config, build_tiny_tokenizer

        return build_tiny_llama_config(build_tiny_tokenizer())

    def tokenizer(self):
        from .tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()

    def materialise(self, out_dir: Path) -> int:
        from .modeling import save_base
        from .startup import first_work
        from .tiny import build_tiny_llama

        model, tokenizer = build_tiny_llama()
        first_work()
        save_base(model, tokenizer, out_dir)
        return sum(p.numel() for p in model.parameters())


class GgufSource(ModelSource):
    """A local .gguf file, dequantized once by the base stage."""

    kind = "gguf"

    def identity(self) -> dict:
        return {"gguf_sha256": file_sha256(self.path) if self.path.is_file() else None}

    def provenance(self) -> dict:
        return {**super().provenance(), "sha256": {self.path.name: file_sha256(self.path)}}

    def config(self):
        from .sources import checked_gguf_file, read_gguf

        return read_gguf(checked_gguf_file(self.cfg.name), config_only=True)

    def tokenizer(self):
        from .sources import checked_gguf_file, gguf_tokenizer

        return gguf_tokenizer(checked_gguf_file(self.cfg.name))

    def materialise(self, out_dir: Path) -> int:
        from .sources import checked_gguf_file, materialise_gguf

        return materialise_gguf(checked_gguf_file(self.cfg.name), out_dir)


class LocalDirSource(ModelSource):
    """A local model directory (config.json, tokenizer, *.safetensors): identified by its files, having no
    revision."""

    kind = "local"

    def identity(self) -> dict:
        # config.json names the architecture, and so the module names the check looks at.
        config = self.path / "config.json"
        return {"config_sha256": file_sha256(config) if config.is_file() else None}

    def provenance(self) -> dict:
        files = {f.name: file_sha256(f) for f in sorted(self.path.iterdir()) if f.is_file()}
        return {**super().provenance(), "sha256": files}

    def directory(self) -> Path:
        from .sources import checked_local_model_dir

        return checked_local_model_dir(self.cfg.name)

    def config(self):
        from .sources import read_from_dir

        return read_from_dir("config", self.directory(), self.cfg.name)

    def tokenizer(self):
        from .sources import read_from_dir

        return read_from_dir("tokenizer", self.directory(), self.cfg.name)

    def materialise(self, out_dir: Path) -> int:
        from .sources import copy_model_dir

        return copy_model_dir(self.directory(), self.cfg.name, out_dir)


class HubSource(ModelSource):
    """A Hugging Face Hub id at a pinned commit (downloaded once into the Hub cache; from the cache alone offline)."""

    kind = "hub"
    needs_pinned_revision = True

    def revision(self) -> str | None:
        return self.cfg.revision

    def identity(self) -> dict:
        return {"revision": self.cfg.revision}

    def config(self):
        from .sources import hub_config

        return hub_config(self.cfg)

    def tokenizer(self):
        from .sources import hub_tokenizer

        return hub_tokenizer(self.cfg)

    def materialise(self, out_dir: Path) -> int:
        from .sources import copy_model_dir, hub_snapshot

        return copy_model_dir(hub_snapshot(self.cfg), self.cfg.name, out_dir)


_SOURCES = {source.kind: source for source in (TinySource, GgufSource, LocalDirSource, HubSource)}


def model_source(cfg: ModelConfig) -> ModelSource:
    return _SOURCES[model_kind(cfg.name)](cfg)


def check_model_source(cfg: ModelConfig, target_modules: list[str]) -> int | None:
    """The model can be found (locally or in the Hub cache when offline) and has lora.target_modules.
    Returns its context length (max_position_embeddings), when its config names one."""
    from .context import model_context
    from .modeling import check_target_modules, skeleton_from_config

    config = model_source(cfg).config()
    try:
        skeleton = skeleton_from_config(config)
    except ValueError as err:
        raise UserError(f"model {cfg.name!r} is not a causal language model: {err}".splitlines()[0]) from None
    check_target_modules(skeleton, target_modules)
    return model_context(config)

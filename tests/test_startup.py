"""qlora_gsm8k.startup: the start-up line a model stage prints, and the hint below it when the heavy libraries are
compiled again in every process (no bytecode, and none written)."""

import importlib
import os
import sys

import pytest

from qlora_gsm8k import startup


@pytest.fixture
def fresh_package(tmp_path, monkeypatch):
    """A package never imported before, on sys.path: its bytecode is whatever this test lets Python write."""
    package = tmp_path / "site" / "freshlib_for_startup"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    yield package
    sys.modules.pop(package.name, None)


def test_a_library_imported_without_writing_bytecode_is_named(fresh_package, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    importlib.import_module(fresh_package.name)
    assert not (fresh_package / "__pycache__").exists()
    assert startup.uncompiled_libraries((fresh_package.name,)) == [fresh_package.name]
    hint = startup.uncompiled_hint([fresh_package.name])
    assert "PYTHONDONTWRITEBYTECODE is set" in hint and "PYTHONPYCACHEPREFIX=" in hint


def test_a_library_with_bytecode_is_not_named(fresh_package, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    importlib.import_module(fresh_package.name)
    assert any((fresh_package / "__pycache__").glob("*.pyc"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # what is there is read, whether or not writes are allowed
    assert startup.uncompiled_libraries((fresh_package.name,)) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_library_without_bytecode_is_named(fresh_package, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    importlib.import_module(fresh_package.name)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    # Writable, so the next process compiles it once and keeps it: nothing to say
    assert startup.uncompiled_libraries((fresh_package.name,)) == []
    fresh_package.chmod(0o555)
    try:
        assert startup.uncompiled_libraries((fresh_package.name,)) == [fresh_package.name]
        assert "their directory is read-only" in startup.uncompiled_hint([fresh_package.name])
    finally:
        fresh_package.chmod(0o755)


def test_the_hint_follows_the_start_up_line_when_a_heavy_library_is_uncompiled(fresh_package, monkeypatch, capsys):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    importlib.import_module(fresh_package.name)
    monkeypatch.setattr(startup, "HEAVY_LIBRARIES", (fresh_package.name,))
    monkeypatch.setitem(startup._state, "reporting", True)
    monkeypatch.setitem(startup._state, "reported", False)
    startup.first_work()
    startup.first_work()  # once per process
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("start-up: imports ") and lines[0].endswith(" s to first work)")
    assert lines[1].startswith(f"start-up: {fresh_package.name} has no bytecode here")


def test_a_library_not_imported_yet_is_looked_up_without_importing_it(fresh_package, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert startup.uncompiled_libraries([fresh_package.name, "no_such_library_here"]) == [fresh_package.name]
    assert fresh_package.name not in sys.modules
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # the process importing it would write its bytecode
    assert startup.uncompiled_libraries([fresh_package.name]) == []

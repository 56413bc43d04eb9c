"""Which package files each stage script uses (imports followed transitively, lazy ones included).

`python tools/stage_deps.py` rewrites the qlora_gsm8k/*.py deps of every stage in dvc.yaml to exactly that
set, keeping the file's layout; tests/test_pipeline.py fails when they drift."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "qlora_gsm8k"


def _module_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and path.parent.name == PACKAGE:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                found.update(f"{PACKAGE}.{name}" for name in names)
            elif node.module == PACKAGE:
                found.update(f"{PACKAGE}.{alias.name}" for alias in node.names)
            elif node.module and node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE + "."))
    return found


def package_files_used(script: Path) -> set[str]:
    """Package files a script uses, transitively, as repo-relative paths."""
    seen: set[str] = set()
    todo = list(_module_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_module_imports(REPO_ROOT / (module.replace(".", "/") + ".py")))
    return {module.replace(".", "/") + ".py" for module in seen}


def stage_script(stage: dict) -> str:
    """Repo-relative path of the script a stage runs (`python -m stages.<name> ...`)."""
    return stage.get("do", stage)["cmd"].split()[2].replace(".", "/") + ".py"


def sync_dvc_yaml(path: Path = REPO_ROOT / "dvc.yaml") -> None:
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        item = line.strip()
        if item.startswith(f"- {PACKAGE}/"):
            continue
        out.append(line)
        if item.startswith("- stages/") and item.endswith(".py"):
            indent = line[: line.index("-")]
            out.extend(f"{indent}- {f}" for f in sorted(package_files_used(REPO_ROOT / item[2:])))
    path.write_text("\n".join(out) + "\n")
    yaml.safe_load(path.read_text())


if __name__ == "__main__":
    sync_dvc_yaml()

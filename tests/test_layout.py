"""The core modules import one another without a cycle, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "fiberloader"


def core_imports() -> Dict[str, Set[str]]:
    """For each private module of the package: the private modules it imports (anywhere in it)."""
    core = {path.stem for path in PACKAGE.glob("_*.py") if path.stem != "__init__"}
    imports: Dict[str, Set[str]] = {}
    for name in core:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        found = {
            node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in core
        }
        imports[name] = found  # type: ignore[assignment]
    return imports


def test_no_import_cycle_between_the_core_modules() -> None:
    imports = core_imports()
    assert "_dataloader" in imports and "_run" in imports  # the walk found the core
    cycles: List[List[str]] = []

    def walk(name: str, path: List[str]) -> None:
        for target in sorted(imports[name]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            else:
                walk(target, path + [target])

    for name in sorted(imports):
        walk(name, [name])
    assert cycles == []

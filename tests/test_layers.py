"""The folder tree is the architecture: no layer imports from a layer above it, and no
modules of one layer import each other in a cycle (the contracts in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_are_kept():
    from importlinter.application.use_cases import lint_imports  # a test dependency
    from importlinter.configuration import configure

    configure()
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None,
                        no_logo=True) is True


def test_no_private_name_is_imported_across_modules():
    """`from volseg.x import _y` couples a module to another's internals."""
    found = []
    for path in sorted((ROOT / "volseg").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("volseg"):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not found, found


def test_long_functions_say_why():
    """A function over 100 lines says why in its docstring (or is split)."""
    found = []
    for path in sorted((ROOT / "volseg").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100 and "over 100 lines" not in (ast.get_docstring(node) or "").lower():
                    found.append(f"{path.relative_to(ROOT)}: {node.name} ({length} lines)")
    assert not found, found

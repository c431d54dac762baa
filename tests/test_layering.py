"""Launching sits above the library (docs/architecture.md): ``corr3d.launch`` and ``corr3d.cli`` import the stages,
and no stage imports them back, not even inside a function (a deferred import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from corr3d.config import REPO_ROOT

PACKAGE = REPO_ROOT / "corr3d"
LIBRARY = ("assets", "render", "data", "geometry", "models", "losses", "training", "eval", "utils")
LIBRARY_MODULES = ("config.py", "config_schema.py", "errors.py")
ABOVE = ("corr3d.launch", "corr3d.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``source`` names, relative imports resolved
    against ``module``; ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _is_above(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in ABOVE)


def library_files() -> list[Path]:
    files = [p for sub in LIBRARY for p in sorted((PACKAGE / sub).rglob("*.py"))]
    return files + [PACKAGE / name for name in LIBRARY_MODULES]


def test_the_checker_sees_every_form_of_import():
    """The walk below would pass vacuously if the checker missed an import form: each of these must be caught."""
    for source in ("import corr3d.launch.slurm", "from corr3d.launch.sweep import run_sweep", "from corr3d import cli",
                   "def f():\n    from corr3d.launch import tasks\n", "from ..launch import slurm",
                   "from .. import cli"):
        found = imported_modules(source, "corr3d.training.run")
        assert any(_is_above(name) for name in found), source
    assert not any(_is_above(n) for n in imported_modules("from corr3d.launcher_free import x", "corr3d.utils.io"))
    assert imported_modules("from . import io", "corr3d.utils", is_package=True) == {"corr3d.utils", "corr3d.utils.io"}


@pytest.mark.parametrize("sub", LIBRARY)
def test_every_library_package_is_walked(sub):
    assert any(p.relative_to(PACKAGE).parts[0] == sub for p in library_files())  # renamed or moved: update LIBRARY


def test_no_library_module_imports_the_launcher_or_the_cli():
    offenders = []
    for path in library_files():
        found = imported_modules(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
        offenders += [f"{path.relative_to(REPO_ROOT)}: {name}" for name in sorted(found) if _is_above(name)]
    assert not offenders, ("library modules import the launch layer (move the code into corr3d/launch/ or pass "
                           "the function in from there): " + "; ".join(offenders))

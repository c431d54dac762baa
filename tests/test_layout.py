"""Tests mirror the package (issue 20): every test file is ``tests/<package path>/test_<module>.py`` or
``tests/<package path>/test_<module>_<aspect>.py`` for a module ``corr3d/<package path>/<module>.py`` (a package's
``__init__.py`` is the module ``<package>`` one level up: ``corr3d/eval/tasks/__init__.py`` ->
``tests/eval/test_tasks.py``), so the tests of a module are found from its path and nowhere else. The exceptions are
the repository-level tests below, which test no single module."""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.helpers.tiny import REPO

# file name under tests/ -> why it tests no single module of corr3d/
REPOSITORY_LEVEL = {
    "test_api.py": "the public Python API's defaults, across models and evaluation",
    "test_docs.py": "README.md and docs/ name paths, commands and keys that exist",
    "test_experiments.py": "the experiment files experiments/*.yaml",
    "test_layering.py": "which packages may import which (docs/architecture.md)",
    "test_layout.py": "this file: the layout of tests/",
    "test_makefile.py": "the Makefile's targets and the commands they run",
    "test_optional_dependencies.py": "pyproject's extras against every import of their packages in corr3d/",
    "test_data_prep_ci_coverage.py": "data_prep/ci_coverage.py, a command script outside the package",
    "test_data_prep_render_objects.py": "data_prep/render_objects.py, a command script outside the package",
}


def package_modules(package: Path) -> dict[tuple[Path, str], Path]:
    """(folder under tests/, module name) -> the module it stands for; a leading underscore is dropped
    (``perf/_gpu.py`` -> ``tests/perf/test_gpu.py``)."""
    modules = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if path.name == "__init__.py":
            if rel.parent != Path("."):       # the top-level package itself is covered by REPOSITORY_LEVEL
                modules[(rel.parent.parent, rel.parent.name)] = path
        else:
            modules[(rel.parent, path.stem.lstrip("_"))] = path
    return modules


def layout_error(test: Path, modules: dict[tuple[Path, str], Path]) -> str | None:
    """None when ``test`` (relative to tests/) mirrors a module or is repository-level, else what to do about it."""
    if test.parent == Path(".") and test.name in REPOSITORY_LEVEL:
        return None
    stem = test.stem.removeprefix("test_")
    if any(test.parent == folder and (stem == name or stem.startswith(name + "_")) for folder, name in modules):
        return None
    candidates = {f"tests/{folder / f'test_{name}.py'}": module for (folder, name), module in modules.items()}
    closest = difflib.get_close_matches(f"tests/{test}", candidates, n=1, cutoff=0.0)[0]
    return (f"tests/{test} mirrors no module of corr3d/: name it tests/<package path>/test_<module>[_<aspect>].py "
            f"after the module it tests (closest: {closest} for {candidates[closest].relative_to(REPO)}), "
            "or, if it tests no single module, add it to REPOSITORY_LEVEL in tests/test_layout.py with the reason")


@pytest.fixture(scope="module")
def modules():
    return package_modules(REPO / "corr3d")


def test_every_test_file_mirrors_a_module(modules):
    tests = REPO / "tests"
    errors = [layout_error(path.relative_to(tests), modules) for path in sorted(tests.rglob("test_*.py"))]
    assert not [e for e in errors if e], "\n".join(e for e in errors if e)


def test_repository_level_tests_exist():
    missing = sorted(name for name in REPOSITORY_LEVEL if not (REPO / "tests" / name).is_file())
    assert not missing, f"REPOSITORY_LEVEL in tests/test_layout.py names files that are gone: {missing}"


def test_the_rule_accepts_mirrors_and_names_the_module_for_the_rest(modules):
    for fine in ("render/test_store.py", "render/test_store_authors_layout.py", "eval/test_offline_suite.py",
                 "eval/test_tasks.py", "perf/test_gpu.py", "test_config_schema_protocol_options.py", "test_docs.py"):
        assert layout_error(Path(fine), modules) is None, fine
    for wrong in ("render/test_render_io.py", "eval/metrics/test_metrics.py", "test_protocol_options.py",
                  "eval/test_storefront.py", "geometry/test_docs.py"):
        assert "mirrors no module of corr3d/" in layout_error(Path(wrong), modules), wrong
    message = layout_error(Path("render/test_stor.py"), modules)
    assert "(closest: tests/render/test_store.py for corr3d/render/store.py)" in message

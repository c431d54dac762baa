"""The extras of pyproject.toml: every use of their packages goes through ``corr3d.utils.optional.import_extra``, so a
plain ``pip install corr3d`` gets an error naming ``pip install 'corr3d[<extra>]'``; the module map and pyproject agree.

A missing package is simulated with ``sys.modules[name] = None`` (Python then refuses to import it).
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from corr3d.errors import Corr3dUserError
from corr3d.utils.optional import EXTRAS, MissingExtraError, import_extra
from tests.helpers.tiny import REPO


def hide(monkeypatch, package: str) -> None:
    """Make ``package`` (and its submodules) unimportable for the rest of the test."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


UID = "a" * 32
CALLS = {  # every function that imports a package of an extra: (package, arguments that reach the import)
    "corr3d.assets.objaverse:set_cache_dir": ("objaverse", lambda tmp: (tmp,)),
    "corr3d.assets.objaverse:cache_dir": ("objaverse", lambda tmp: ()),
    "corr3d.assets.objaverse:lvis_uids": ("objaverse", lambda tmp: (["chair"],)),
    "corr3d.assets.objaverse:select_uids": ("objaverse", lambda tmp: ()),
    "corr3d.assets.objaverse:download_objects": ("objaverse", lambda tmp: ([UID],)),
    "corr3d.assets.objaverse:object_metadata": ("objaverse", lambda tmp: ([UID],)),
    "corr3d.assets.objects:objaverse_path": ("objaverse", lambda tmp: (UID,)),
    "corr3d.data.mvimgnet:MVImgNetObject.open": ("pycolmap", lambda tmp: (tmp,)),
    "corr3d.launch.slurm:make_executor": ("submitit", lambda tmp: (tmp, {})),
    "corr3d.launch.tasks:_requeue_submission": ("submitit", lambda tmp: (object(),)),
}


def resolve(where: str):
    module, _, attribute = where.partition(":")
    target = importlib.import_module(module)
    for name in attribute.split("."):
        target = getattr(target, name)
    return target


@pytest.mark.parametrize("where", sorted(CALLS))
def test_a_missing_extra_names_the_pip_command(monkeypatch, tmp_path, where):
    package, arguments = CALLS[where]
    function = resolve(where)
    hide(monkeypatch, package)
    with pytest.raises(MissingExtraError) as info:
        function(*arguments(tmp_path))
    command = f"pip install 'corr3d[{EXTRAS[package]}]'"
    assert command in str(info.value) and info.value.fix.startswith(command)
    # the command-line error boundary prints it without a traceback; `except ImportError` still catches it
    assert isinstance(info.value, Corr3dUserError) and isinstance(info.value, ImportError)


def test_the_calls_above_cover_every_import_of_an_extra():
    """Each ``import_extra(...)`` in corr3d is exercised above (by function name), and no module imports a package
    of an extra directly, which would bring back a bare ModuleNotFoundError."""
    found = set()
    for path in sorted((REPO / "corr3d").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                direct = [n for n in names if n.partition(".")[0] in EXTRAS]
                assert not direct, f"{path}:{node.lineno} imports {direct} without import_extra"
            if isinstance(node, ast.FunctionDef):
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "import_extra":
                        found.add((path.relative_to(REPO).with_suffix("").as_posix().replace("/", "."), node.name))
    module_and_function = {(w.partition(":")[0], w.partition(":")[2].rpartition(".")[2]) for w in CALLS}
    assert found == module_and_function


def _requirement_names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def test_extras_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    required = _requirement_names(project["dependencies"])
    for module, extra in EXTRAS.items():
        distributions = {d.lower() for d in importlib.metadata.packages_distributions()[module]}
        assert distributions & _requirement_names(extras[extra]), (module, extra, extras[extra])
        assert not distributions & required, f"{module} is both required and in the {extra!r} extra"
    assert Requirement(extras["all"][0]).extras == set(EXTRAS.values()) and len(extras["all"]) == 1
    assert Requirement(extras["all"][0]).name == project["name"]


def test_the_makefile_installs_every_extra():
    assert "pip install -q -e '.[all,test]'" in (REPO / "Makefile").read_text()


def test_an_unknown_package_is_a_key_error_with_the_closest_name():
    with pytest.raises(KeyError, match="did you mean 'submitit'"):
        import_extra("submitt")


def test_a_missing_dependency_of_the_package_itself_is_not_blamed_on_the_extra(monkeypatch, tmp_path):
    """Installed package, missing dependency: the original error (naming the dependency) is what the user sees."""
    package = tmp_path / "corr3d_fake_extra"
    package.mkdir()
    (package / "__init__.py").write_text("import corr3d_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "corr3d_fake_extra", "fake")
    with pytest.raises(ModuleNotFoundError) as info:
        import_extra("corr3d_fake_extra")
    assert info.type is ModuleNotFoundError and info.value.name == "corr3d_absent_dependency"
    hide(monkeypatch, "corr3d_fake_extra")
    with pytest.raises(MissingExtraError, match=r"pip install 'corr3d\[fake\]'"):
        import_extra("corr3d_fake_extra")


def test_an_installed_extra_imports_the_module():
    helpers = import_extra("submitit.helpers")
    assert helpers is sys.modules["submitit.helpers"] and hasattr(helpers, "DelayedSubmission")
    assert Path(import_extra("objaverse").__file__).exists()

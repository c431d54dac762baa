"""The packages of corr3d's extras (``[project.optional-dependencies]`` in pyproject.toml), imported where used.

A plain ``pip install corr3d`` leaves them out (``make setup`` installs every extra: ``.[all,test]``). Code that needs
one imports it through :func:`import_extra`, so a missing package is a :class:`MissingExtraError` that names the
``pip install 'corr3d[<extra>]'`` bringing it, not a bare ModuleNotFoundError.
"""
from __future__ import annotations

import difflib
import importlib
import types

from corr3d.errors import Corr3dUserError

# top-level module -> the extra that installs it; tests/test_optional_dependencies.py checks it against pyproject.toml
EXTRAS = {"objaverse": "objaverse", "pycolmap": "colmap", "submitit": "cluster"}


class MissingExtraError(Corr3dUserError, ImportError):
    """A package of one of corr3d's extras is not installed; the message and ``fix`` give the pip command."""


def import_extra(module: str) -> types.ModuleType:
    """``module`` (e.g. ``"submitit.helpers"``), imported; :class:`MissingExtraError` when its package is missing."""
    top = module.partition(".")[0]
    if top not in EXTRAS:
        close = difflib.get_close_matches(top, EXTRAS, n=1)
        raise KeyError(f"import_extra: {top!r} belongs to no corr3d extra"
                       f"{f'; did you mean {close[0]!r}?' if close else ''} (known: {sorted(EXTRAS)})")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.partition(".")[0] != top:
            raise  # the package is there but a dependency of its own is not: its message names that one
        extra = EXTRAS[top]
        command = f"pip install 'corr3d[{extra}]'"
        raise MissingExtraError(
            f"the package {top!r} is not installed (corr3d's optional {extra!r} extra); install it with: {command}",
            fix=f"{command}, or in a checkout: .venv/bin/pip install -e '.[{extra}]'") from err

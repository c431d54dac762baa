"""Safe identifiers -> paths under a root: nothing a user- or data-supplied name says may address a path outside it.

Identifiers (experiment names, Objaverse uids, procedural object names, object directory names) become single path
components. :func:`safe_name` accepts only ``[A-Za-z0-9][A-Za-z0-9._-]*`` (no ``/``, ``\\``, ``..``, NUL, no
leading dot, bounded length) and :func:`safe_join` then checks that the *resolved* path (symlinks followed) is still
inside the resolved root, so a symlink planted inside the root cannot redirect a write or a delete elsewhere.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from corr3d.errors import UnsafePathError

MAX_NAME = 200
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def safe_name(name, what: str = "name", pattern: re.Pattern | None = None, fix: str | None = None) -> str:
    """``name`` as a str if it is a safe single path component (see module doc), else :class:`UnsafePathError`."""
    text = "" if name is None else str(name)
    problem = None
    if not text:
        problem = "is empty"
    elif "\x00" in text:
        problem = "contains a NUL byte"
    elif os.path.isabs(text) or text.startswith(("/", "\\", "~")):
        problem = "is an absolute path"
    elif "/" in text or "\\" in text:
        problem = "contains a path separator"
    elif text in (".", ".."):
        problem = "contains '..'"
    elif len(text) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    elif not (pattern or _NAME).match(text):
        problem = f"may only contain letters, digits, '.', '_' and '-' (pattern {(pattern or _NAME).pattern})"
    if problem:
        raise UnsafePathError(f"{what} {text!r} {problem}", fix=fix or f"use a plain {what} such as 'my_run-1'")
    return text


def is_within(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` resolves (symlinks followed, even for missing tails) to ``root`` or below it."""
    root_r = os.path.realpath(root)
    path_r = os.path.realpath(path)
    return path_r == root_r or path_r.startswith(root_r.rstrip(os.sep) + os.sep)


def ensure_within(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` unchanged if it resolves inside ``root``; :class:`UnsafePathError` otherwise."""
    if not is_within(root, path):
        raise UnsafePathError(f"{what} {str(path)!r} resolves to {os.path.realpath(path)}, outside {root}",
                              path=path, fix=f"remove the symlink or choose a {what} inside {root}")
    return Path(path)


def safe_join(root: str | os.PathLike, *names, what: str = "name") -> Path:
    """``root / n1 / n2 ...`` where every ``n`` passes :func:`safe_name` and the result resolves inside ``root``."""
    path = Path(root)
    for name in names:
        path = path / safe_name(name, what)
    return ensure_within(root, path, what)


__all__ = ["safe_name", "safe_join", "ensure_within", "is_within", "MAX_NAME"]

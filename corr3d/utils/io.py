"""Atomic file and folder writes: readers (other processes, a resumed run) never see a half-written result.

A file is written to a temporary sibling (same folder, so the final ``os.replace`` is a rename on one filesystem,
atomic on POSIX) and renamed over the target; a folder is built elsewhere and swapped in with two renames.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A unique hidden name next to ``path`` that keeps its suffix (writers such as ``savefig`` read the format
    from it): ``.<stem>.<pid>.<random>.<tag><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{tag}{path.suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary sibling, then rename it to ``path``.

    If ``write`` fails the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def json_default(value: Any):
    """``json.dumps(default=…)`` for the values results hold: numpy/torch scalars and arrays, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):  # torch scalars, without importing torch
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """The one JSON file writer: atomic (:func:`atomic_write`), parent folders created, numpy/torch values as
    numbers and lists (:func:`json_default`), one trailing newline. ``indent=None`` writes one compact line."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default) + "\n")


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike, old: str | os.PathLike | None = None) -> Path:
    """Move the finished folder ``src`` to ``dst``, replacing an existing ``dst``.

    An existing ``dst`` is first renamed aside (to ``old``, default a hidden sibling) and removed after ``src`` is in
    place, so ``dst`` is always either the old or the new complete folder (absent for the instant between the two
    renames). ``src`` must be on the same filesystem as ``dst``."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.rename(src, dst)
        return dst
    aside = Path(old) if old is not None else dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(dst, aside)
    os.rename(src, dst)
    shutil.rmtree(aside, ignore_errors=True)
    return dst

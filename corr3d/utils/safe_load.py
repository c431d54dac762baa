"""Loading files that came from disk without executing code from them.

- :func:`restricted_pickle_load`: a pickle reader (TAP-Vid ``.pkl`` files) whose unpickler resolves only numpy
  array/dtype/scalar reconstruction and plain builtin containers and scalars. Anything else a pickle may name —
  ``os.system``, ``builtins.eval``, ``subprocess.Popen``, any class with a ``__reduce__`` — raises
  :class:`corr3d.errors.DataFileError` before it is called.
- :func:`safe_checkpoint_load`: ``torch.load(weights_only=True)`` (tensors, containers, primitives and the globals in
  :func:`checkpoint_safe_globals` only) with errors that name the file.
- :func:`unsafe_pickle_globals`: which globals a ``torch.save`` file names that ``weights_only`` refuses, read without
  executing anything; ``None`` for a file that is not a complete checkpoint pickle (truncated, corrupt, random bytes).
  Only a file with such globals may be answered with "trust this file" advice: a corrupt file never is.
- :func:`check_finite_tensors`: refuse NaN/inf tensors read from a file, naming the file and the tensor.
"""
from __future__ import annotations

import io
import os
import pathlib
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

from corr3d.errors import DataFileError, NonFiniteTensorError

# (module, name) pairs a TAP-Vid / DINO-Tracker pickle needs: numpy arrays (both numpy 1 and 2 module paths, every
# pickle protocol), dtypes and scalars, and builtin containers/scalars. No function that has side effects.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_ALLOWED: set[tuple[str, str]] = {(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar", "_frombuffer")}
_ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_ALLOWED |= {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int",
                                       "float", "complex", "bool", "slice", "range")}
_ALLOWED |= {("collections", "OrderedDict")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside the allow-list (see the module doc)."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise DataFileError(f"refusing to load: the pickle asks for {module}.{name}, which is not a numpy array or "
                            "a builtin container (a pickle naming other callables can run arbitrary code)",
                            path=self.source,
                            fix="use the official dataset file (it holds only numpy arrays, dicts and lists) or "
                                "re-create it with corr3d's writer")

    def persistent_load(self, pid):
        raise DataFileError("refusing to load a pickle with persistent ids", path=self.source)


def restricted_pickle_load(path: str | os.PathLike, what: str = "pickle file"):
    """Unpickle ``path`` allowing numpy arrays and builtin containers only; errors name the file and the fix."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(io.BufferedReader(fh), str(path)).load()
    except DataFileError:
        raise
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as err:
        raise DataFileError(f"not a readable {what} ({type(err).__name__}: {err})", path=path,
                            fix="the file is truncated or not a pickle: download it again") from None


def checkpoint_safe_globals() -> list:
    """Non-tensor globals a corr3d/Lightning training checkpoint legitimately holds (allowed under weights_only)."""
    # deferred: keeps this module (used by model/adapter loading, hubconf.py) free of OmegaConf
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    extra: list = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]
    extra += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode]
    return extra


def load_failure_reason(err: BaseException) -> str:
    """A short reason for a failed load; never torch's advice to re-run with ``weights_only=False`` (wrong for a
    corrupt file, and unsafe advice for any file)."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:  # torch's weights-only wrapper: keep only the unpickler's own reason
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    elif "weights_only" in text:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0].split(". ")[0] if lines else ""
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def unsafe_pickle_globals(path: str | os.PathLike, allowed: Iterable = ()) -> list[str] | None:
    """The globals (``module.name``) the pickle of a ``torch.save`` file names that ``torch.load(weights_only=True)``
    refuses (beyond torch's allow-list and ``allowed``), read statically: nothing in the file is executed.

    Returns ``None`` when the file is not a complete ``torch.save`` pickle (truncated, corrupt, random bytes, another
    format): such a file is broken, and advice to trust its pickle would be wrong."""
    from torch import _weights_only_unpickler as wou  # deferred: private torch module, only needed on a failure

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            if zipfile.is_zipfile(path):
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            # legacy (pre-zip) torch.save: magic number, protocol, sys info and the object, each a complete pickle
            safe = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
            found: set[str] = set()
            with open(path, "rb") as fh:
                for _ in range(4):
                    found |= wou.get_globals_in_pkl(fh)
            return sorted(found - safe)
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - EOFError/UnpicklingError/RuntimeError(zip)/ValueError: not a complete pickle
        return None


def safe_checkpoint_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with :func:`checkpoint_safe_globals`; a file that is truncated, not a
    checkpoint, or names other globals raises :class:`corr3d.errors.DataFileError` naming it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError/EOFError for corrupt files
        unsafe = unsafe_pickle_globals(path, checkpoint_safe_globals())
        if unsafe:  # a complete pickle that names code: refused, never executed
            raise DataFileError(f"checkpoint refused by the weights-only loader: it pickles {', '.join(unsafe[:5])}, "
                                "not only tensors and containers (unpickling it could run code)", path=path,
                                fix="only load checkpoints written by corr3d; delete this file to resume from an "
                                    "older one") from None
        raise DataFileError(f"unreadable checkpoint: truncated or corrupt ({load_failure_reason(err)})", path=path,
                            fix="the file is truncated or corrupt: delete it (training resumes from the previous "
                                "checkpoint)") from None


def non_finite_tensor(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating tensor holding NaN/inf, or None when all are finite."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return str(name), int((~torch.isfinite(value)).sum()), value.numel()
    return None


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike | None,
                         what: str = "tensor") -> None:
    """Raise :class:`corr3d.errors.NonFiniteTensorError` naming ``path`` and the first tensor holding NaN/inf."""
    found = non_finite_tensor(tensors)
    if found is not None:
        name, bad, total = found
        raise NonFiniteTensorError(f"{what} '{name}' holds {bad} non-finite (NaN/inf) of {total} values", path=path,
                                   fix="the file was written from broken weights (a diverged training run?): use "
                                       "another file, or re-train with a lower optim.lr")


__all__ = ["RestrictedUnpickler", "restricted_pickle_load", "safe_checkpoint_load", "checkpoint_safe_globals",
           "unsafe_pickle_globals", "check_finite_tensors", "load_failure_reason",
           "non_finite_tensor"]

"""Loading files that came from disk without executing code from them.

- :func:`restricted_pickle_load`: a pickle reader (TAP-Vid ``.pkl`` files) whose unpickler resolves only numpy
  array/dtype/scalar reconstruction and plain builtin containers and scalars. Anything else a pickle may name —
  ``os.system``, ``builtins.eval``, ``subprocess.Popen``, any class with a ``__reduce__`` — raises
  :class:`corr3d.errors.DataFileError` before it is called.
- :func:`safe_checkpoint_load`: ``torch.load(weights_only=True)`` (tensors, containers, primitives and the globals in
  :data:`CHECKPOINT_SAFE_GLOBALS` only) with errors that name the file.
"""
from __future__ import annotations

import io
import os
import pathlib
import pickle
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

from corr3d.errors import DataFileError

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
    extra: list = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]
    extra += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode]
    return extra


def safe_checkpoint_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with :func:`checkpoint_safe_globals`; a file that is truncated, not a
    checkpoint, or names other globals raises :class:`corr3d.errors.DataFileError` naming it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise DataFileError("checkpoint refused by the weights-only loader: truncated, corrupt, or it pickles "
                            "objects other than tensors and containers", path=path, fix="only load checkpoints written by corr3d; delete this file to resume "
                                           "from an older one") from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/zipfile errors for corrupt files
        raise DataFileError(f"unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                            path=path, fix="the file is truncated or corrupt: delete it (training resumes from the "
                                           "previous checkpoint)") from None


__all__ = ["RestrictedUnpickler", "restricted_pickle_load", "safe_checkpoint_load", "checkpoint_safe_globals"]

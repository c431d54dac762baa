"""User-facing errors: the family the ``corr3d`` command prints as one message (file + fix) instead of a traceback.

``corr3d.cli.main`` is the error boundary: it catches :class:`Corr3dUserError` (and ``corr3d.config.ConfigError``,
``FileNotFoundError``), prints ``corr3d: error: <message>`` plus the ``fix`` line, and exits non-zero; ``--debug``
re-raises so the traceback is shown.
"""
from __future__ import annotations

import os


class Corr3dUserError(Exception):
    """An error the user can fix: bad input file, unsafe identifier, locked run. ``path`` and ``fix`` are shown."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, fix: str | None = None):
        self.message = str(message)
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.path and self.path not in text:
            text = f"{self.path}: {text}"
        return text


class UnsafePathError(Corr3dUserError, ValueError):
    """An identifier (uid, object spec, experiment name) that would address a path outside its root."""


class DataFileError(Corr3dUserError, ValueError):
    """A data, weights or checkpoint file that exists but cannot be read safely (corrupt, truncated, malformed)."""


class DatasetFormatError(DataFileError):
    """A dataset file whose content breaks its documented format (a field missing, of the wrong shape, out of range
    or inconsistent with another file); the message names the file and the field, ``fix`` what to do about it."""


class EmptySelectionError(Corr3dUserError, ValueError):
    """A selection (object filter, requested items) that leaves nothing to measure; the message says why."""


class RenderFailedError(Corr3dUserError, RuntimeError):
    """Requested objects that could not be rendered; the message lists each with its reason."""


class UnknownNameError(Corr3dUserError, KeyError):
    """A name (backbone, task, object) that is not known; the message lists the valid ones."""


class NotSupportedError(Corr3dUserError, TypeError):
    """An input of a kind corr3d cannot use (e.g. a timm model id that is not a ViT)."""


class RunLockedError(Corr3dUserError, RuntimeError):
    """Another live process holds the lock of a run directory or render root."""

    exit_code = 3


class AdapterMismatchError(DataFileError):
    """An adapter (``adapter.json`` / ``adapter.safetensors``) or imported checkpoint whose keys, shapes or backbone do
    not fit what it describes or what it is loaded into; the message names the file, expected vs found."""


class NonFiniteTensorError(DataFileError):
    """A weights, adapter or checkpoint file holding NaN/inf values; the message names the file and the tensor."""


class NonFiniteFeaturesError(Corr3dUserError, FloatingPointError):
    """A model produced NaN/inf features (its weights are broken): evaluating it would report meaningless numbers."""


class TrainingDivergedError(Corr3dUserError, FloatingPointError):
    """Training produced a non-finite loss or non-finite weights; the message names the step, the fix the setting."""


__all__ = ["Corr3dUserError", "UnsafePathError", "DataFileError", "RunLockedError", "UnknownNameError",
           "NotSupportedError", "AdapterMismatchError", "NonFiniteTensorError", "NonFiniteFeaturesError",
           "TrainingDivergedError"]
__all__ += ["DatasetFormatError", "EmptySelectionError", "RenderFailedError"]

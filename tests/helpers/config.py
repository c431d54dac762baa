"""One section of the real composed config, with a test's changes (so tests cannot drift from the schema)."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from corr3d.config import load_config


def config_section(path: str, experiment: str = "base", **values: Any):
    """``load_config(experiment)`` at dotted ``path`` (e.g. ``"eval.pose"``) with ``values`` set on it.

    Values are typed and validated by the schema on assignment; the section stays attached to its config, so
    interpolations such as ``${data_root}`` resolve."""
    section = OmegaConf.select(load_config(experiment), path, throw_on_missing=True)
    for key, value in values.items():
        setattr(section, key, value)
    return section

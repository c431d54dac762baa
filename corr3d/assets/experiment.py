"""The experiment's objects, decided in one place: what it trains on, validates on and evaluates on.

- train / val (``data.kind: rendered``): ``data.train_objects`` + the specs of ``data.object_list`` (duplicates
  dropped); validation objects are ``data.val_objects`` or, when that is empty, a seeded ``data.val_fraction`` of
  the candidates; then the first ``data.num_train_objects`` of the rest. Other kinds (MVImgNet) read their training
  data from disk: no objects to render, train = val = [] here (``corr3d.data.datamodule`` discovers them).
- eval: ``equivariance.objects`` + the specs of ``equivariance.object_list`` (never trained on).

Rendering (``corr3d render``, SLURM arrays), the datamodule, training and evaluation all ask this module.
"""
from __future__ import annotations

import random
from typing import Iterable, NamedTuple

from corr3d.assets.objaverse import read_object_list


class ExperimentObjects(NamedTuple):
    train: list[str]
    val: list[str]
    eval: list[str]

    def all(self) -> list[str]:
        """Every object once, in the order train, val, eval."""
        return list(dict.fromkeys([*self.train, *self.val, *self.eval]))


def listed_specs(specs: Iterable, list_file: str | None) -> list[str]:
    """``specs`` followed by those of the list file (``data_prep/download_objaverse.py`` output), each once."""
    out = [str(s) for s in specs]
    if list_file:
        out += read_object_list(list_file)
    return list(dict.fromkeys(out))


def object_specs(data_cfg) -> list[str]:
    """Training candidates in order: ``train_objects`` then the list file's specs, duplicates dropped."""
    return listed_specs(data_cfg.train_objects, data_cfg.get("object_list"))


def split_objects(items: list[str], val_items: list[str], val_fraction: float, num_train: int | None,
                  seed: int) -> tuple[list[str], list[str]]:
    """(train, val) object lists, disjoint; ``num_train`` keeps the first k training objects."""
    overlap = sorted(set(items) & set(val_items))
    if overlap:
        raise ValueError(f"objects in both the training and the validation set: {overlap[:5]}")
    if not val_items and val_fraction > 0 and len(items) > 1:
        count = min(len(items) - 1, max(1, round(val_fraction * len(items))))
        val_items = sorted(random.Random(seed).sample(items, count))
        items = [s for s in items if s not in set(val_items)]
    if num_train is not None:
        items = items[: int(num_train)]
    if not items:
        raise ValueError("no training objects (check data.train_objects / object_list / num_train_objects)")
    return items, list(val_items)


def training_objects(data_cfg, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) rendered-object specs of the ``data`` section (module docstring); ([], []) for other kinds."""
    if data_cfg.kind != "rendered":
        return [], []
    return split_objects(object_specs(data_cfg), [str(s) for s in data_cfg.val_objects],
                         float(data_cfg.val_fraction), data_cfg.num_train_objects, seed)


def evaluation_objects(equivariance_cfg) -> list[str]:
    """Held-out evaluation specs of the ``equivariance`` section."""
    return listed_specs(equivariance_cfg.objects, equivariance_cfg.get("object_list"))


def experiment_objects(cfg) -> ExperimentObjects:
    """(train, val, eval) object specs of a whole experiment config (module docstring)."""
    train, val = training_objects(cfg.data, int(cfg.seed))
    return ExperimentObjects(train, val, evaluation_objects(cfg.equivariance))

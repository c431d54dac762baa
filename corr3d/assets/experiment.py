"""The experiment's objects, decided in one place: what it trains on, validates on and evaluates on.

- train / val (``data.kind: rendered``): ``data.train_objects`` + the specs of ``data.object_list`` (duplicates
  dropped); validation objects are ``data.val_objects`` or, when that is empty, a seeded ``data.val_fraction`` of
  the candidates; then the first ``data.num_train_objects`` of the rest. Other kinds (MVImgNet) read their training
  data from disk: no objects to render, train = val = [] here (``corr3d.data.datamodule`` discovers them).
- eval: ``equivariance.objects`` + the specs of ``equivariance.object_list`` (never trained on).
- committed SweetHome3D splits (``data_prep/splits/sh3d_*.txt``, :mod:`corr3d.assets.sh3d`): a training candidate
  from the val / test / test_unseen_categories / untextured split, or a validation object from a test split, is
  refused (:class:`HeldOutObjectError`) wherever the lists are read, so training, rendering and ``make eval`` stop.

Rendering (``corr3d render``, SLURM arrays), the datamodule, training and evaluation all ask this module.
"""
from __future__ import annotations

import random
from typing import Iterable, NamedTuple

from corr3d.assets import sh3d
from corr3d.assets.objaverse import read_object_list
from corr3d.errors import Corr3dUserError, EmptySelectionError


class ExperimentObjects(NamedTuple):
    train: list[str]
    val: list[str]
    eval: list[str]

    def all(self) -> list[str]:
        """Every object once, in the order train, val, eval."""
        return list(dict.fromkeys([*self.train, *self.val, *self.eval]))


SPLIT_PREFIX = "sh3d_split:"


def expand_split(spec: str) -> list[str]:
    """``sh3d_split:<split>[@<n>]`` -> the committed split's specs (``data_prep/splits/sh3d_<split>.txt``); with
    ``@n`` n of them, evenly spaced over the file's order (library, then name), so every library keeps its share.
    Any other spec is returned as is."""
    if not spec.startswith(SPLIT_PREFIX):
        return [spec]
    name, _, count = spec[len(SPLIT_PREFIX):].partition("@")
    specs = sh3d.load_split(name)
    if count:
        if not count.isdigit() or not 0 < int(count) <= len(specs):
            raise Corr3dUserError(f"{spec!r}: the count after '@' must be 1..{len(specs)} (split {name!r} has "
                                  f"{len(specs)} objects)", fix=f"write e.g. {SPLIT_PREFIX}{name}@{min(16, len(specs))}")
        k = int(count)
        specs = [specs[(i * len(specs)) // k] for i in range(k)]
    return specs


def listed_specs(specs: Iterable, list_file: str | None) -> list[str]:
    """``specs`` (a ``sh3d_split:`` entry expands to its split, :func:`expand_split`) followed by those of the list
    file (``data_prep/download_objaverse.py`` output), each once."""
    out = [expanded for s in specs for expanded in expand_split(str(s))]
    if list_file:
        out += read_object_list(list_file)
    return list(dict.fromkeys(out))


class HeldOutObjectError(Corr3dUserError, ValueError):
    """An experiment trains (or validates) on objects of a committed held-out split."""


def _overlap_message(what: str, hits: list[tuple[str, str]], show: int = 5) -> str:
    names = ", ".join(f"{spec} ({split})" for spec, split in hits[:show])
    more = f" ... ({len(hits)} in all)" if len(hits) > show else ""
    return f"{what} include objects of held-out sh3d splits: {names}{more}"


def check_sh3d_held_out(train_specs: Iterable[str], val_specs: Iterable[str] = (),
                        splits_dir: str | None = None) -> None:
    """Refuse (:class:`HeldOutObjectError`) training specs in a held-out sh3d split (val, test,
    test_unseen_categories, untextured) and validation specs in a test split (test, test_unseen_categories,
    untextured): model selection on test objects is training on them too."""
    train_hits = [(s, split) for s in dict.fromkeys(map(str, train_specs))
                  if (split := sh3d.held_out_split(s, splits_dir))]
    if train_hits:
        raise HeldOutObjectError(
            _overlap_message("the training objects (data.train_objects / data.object_list)", train_hits),
            fix="train on data_prep/splits/sh3d_train.txt (data.object_list=data_prep/splits/sh3d_train.txt) and "
                "evaluate on sh3d_test.txt; validation objects belong in data.val_objects")
    val_hits = [(s, split) for s in dict.fromkeys(map(str, val_specs))
                if (split := sh3d.held_out_split(s, splits_dir)) not in (None, "val")]
    if val_hits:
        raise HeldOutObjectError(_overlap_message("the validation objects (data.val_objects)", val_hits),
                                 fix="validate on data_prep/splits/sh3d_val.txt; the test splits are for evaluation")


def object_specs(data_cfg) -> list[str]:
    """Training candidates in order: ``train_objects`` then the list file's specs, duplicates dropped; none may be
    in a held-out sh3d split (:func:`check_sh3d_held_out`)."""
    specs = listed_specs(data_cfg.train_objects, data_cfg.get("object_list"))
    check_sh3d_held_out(specs)
    return specs


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
        raise EmptySelectionError("no training objects", fix="set data.train_objects (e.g. [sh3d_split:train@16]), "
                                  "data.object_list or a larger data.num_train_objects")
    return items, list(val_items)


def training_objects(data_cfg, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) rendered-object specs of the ``data`` section (module docstring); ([], []) for other kinds."""
    if data_cfg.kind != "rendered":
        return [], []
    val_objects = [str(s) for s in data_cfg.val_objects]
    check_sh3d_held_out([], val_objects)
    return split_objects(object_specs(data_cfg), val_objects, float(data_cfg.val_fraction),
                         data_cfg.num_train_objects, seed)


def evaluation_objects(equivariance_cfg) -> list[str]:
    """Held-out evaluation specs of the ``equivariance`` section."""
    return listed_specs(equivariance_cfg.objects, equivariance_cfg.get("object_list"))


def check_experiment_disjoint(cfg) -> None:
    """Everything training and ``make eval`` check before they start: the training and evaluation lists share no
    object (:func:`corr3d.assets.objaverse.check_experiment_disjoint`), and no training / validation object is in a
    held-out sh3d split (:func:`check_sh3d_held_out`; training candidates are also checked wherever they are read)."""
    from corr3d.assets.objaverse import check_experiment_disjoint as check_lists

    check_lists(cfg)
    if cfg.data.get("kind", "rendered") != "rendered":
        return
    try:
        train = listed_specs(cfg.data.train_objects, cfg.data.get("object_list"))
    except OSError:   # a list file is missing: the stage that reads it reports that with its own hint
        return
    check_sh3d_held_out(train, [str(s) for s in cfg.data.get("val_objects") or []])


def experiment_objects(cfg) -> ExperimentObjects:
    """(train, val, eval) object specs of a whole experiment config (module docstring)."""
    train, val = training_objects(cfg.data, int(cfg.seed))
    return ExperimentObjects(train, val, evaluation_objects(cfg.equivariance))

"""The evaluation task interface: what ``make eval`` and training's before/after measurement need from a task.

A task (one module under ``corr3d/eval/tasks/``, exposing ``TASK``) declares
- ``name`` (its metric keys start with ``<name>/``, offline ones with ``offline/<name>/``) and ``order`` (report order);
- ``section``: its settings, ``cfg.eval.<section>`` (or the top-level ``cfg.<section>`` for equivariance);
- its datasets: :meth:`EvalTask.real_sources` (the real benchmark, when on disk) and ``offline_sources`` (its parts of
  the offline suite), or its own :meth:`EvalTask.datasets`;
- :meth:`EvalTask.run` ``(cfg, model, dataset, desc) -> (metrics, tables)``, with ``tables["items"]`` the per-item
  results the CIs are computed from and ``tables["skipped"]`` the inputs it could not read;
- ``headline`` (the metric leaves of its report table) and ``oracle`` (whether ground truth can stand in for
  features, the ceiling).

Every dataset reaches ``run`` in one element format, :class:`Dataset`, whatever its source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from omegaconf import DictConfig


@dataclass(frozen=True)
class Dataset:
    """One dataset of a task as its ``run`` receives it."""

    name: str                      # e.g. onepose_lowtexture, offline_onepose, equivariance
    prefix: str                    # metric keys: pose/, offline/pose/, semantic/spair/ ...
    source: str                    # real | offline | rendered
    paths: Mapping[str, Any] = field(default_factory=dict)
    # item ids and units get the dataset's name: a real and an offline set may reuse object names. Single-dataset
    # tasks keep bare ids (their parts are compared across runs by item id).
    qualify_items: bool = True

    @property
    def offline(self) -> bool:
        return self.source == "offline"


@dataclass(frozen=True)
class RealSource:
    """A real benchmark a task reads when it is on disk (``paths``/``present``/``missing`` read the task section)."""

    name: str
    prefix: str
    paths: Callable[[DictConfig], dict]
    present: Callable[[DictConfig], bool]
    missing: Callable[[DictConfig], str]    # the message (download / preparation hint) when it is absent


@dataclass(frozen=True)
class OfflineSource:
    """A dataset of the offline suite: ``part`` is the suite part that holds it (``corr3d.eval.offline_suite``),
    ``paths`` maps the suite's paths (``suite_paths``) to the dataset's."""

    name: str
    prefix: str
    part: str
    paths: Callable[[dict], dict]


class EvalTask:
    """Base class of the evaluation tasks (see the module docstring)."""

    name: ClassVar[str]
    order: ClassVar[int]
    section: ClassVar[str]
    headline: ClassVar[tuple[str, ...]] = ()
    oracle: ClassVar[bool] = True
    offline_sources: ClassVar[tuple[OfflineSource, ...]] = ()
    # (metric leaf, item field, bin edges or None for categorical): the report's breakdowns of a metric by the
    # viewpoint change of its items (``corr3d.eval.stats.binned_table``), e.g. APE by relative rotation
    breakdowns: ClassVar[tuple[tuple[str, str, tuple[float, ...] | None], ...]] = ()
    # minutes one model's part takes on 2 CPU cores (make eval of the main job, measured): parallel parts
    # (``eval.workers``) start the longest first, so no worker is left with a long part at the end
    cost: ClassVar[float] = 1.0

    def settings(self, cfg: DictConfig) -> DictConfig:
        """The task's own config section."""
        return cfg.eval[self.section]

    def real_sources(self) -> Sequence[RealSource]:
        return ()

    def datasets(self, cfg: DictConfig, messages: list[str], suite: Callable[[list[str]], dict] | None = None
                 ) -> list[Dataset]:
        """The real datasets present on disk (``eval.real_data``) and, when enabled, the task's offline-suite parts.
        ``suite(parts)`` generates missing suite parts and returns their paths; an absent real dataset adds its
        preparation hint to ``messages``."""
        out: list[Dataset] = []
        section = self.settings(cfg)
        if cfg.eval.real_data:
            for src in self.real_sources():
                if src.present(section):
                    out.append(Dataset(src.name, src.prefix, "real", src.paths(section)))
                else:
                    messages.append(f"{self.name}: {src.missing(section)}")
        if cfg.eval.offline.enabled and self.offline_sources and suite is not None:
            paths = suite(sorted({s.part for s in self.offline_sources}))
            out += [Dataset(s.name, s.prefix, "offline", s.paths(paths)) for s in self.offline_sources]
        return out

    def run(self, cfg: DictConfig, model, dataset: Dataset, desc: str) -> tuple[dict, dict]:
        raise NotImplementedError

    def protocol(self, cfg: DictConfig, dataset: Dataset) -> tuple[str, str]:
        """(label, detail) of the protocol that made ``dataset``'s numbers: ``paper`` (the authors' settings: the
        numbers compare with the paper's tables), ``official`` (the benchmark's own protocol, which the paper does
        not use) or ``corr3d`` (corr3d's own or faster settings: compare only with corr3d's numbers)."""
        return "corr3d", ""

    def headline_keys(self, keys: set[str], scope: str = "") -> list[str]:
        """The report table's keys among ``keys`` (every metric key measured), under ``scope`` ("" or "offline/")."""
        base = f"{scope}{self.name}/"
        return [base + leaf for leaf in self.headline if base + leaf in keys]


PROTOCOL_LABELS = ("paper", "official", "corr3d")


def is_oracle_model(model) -> bool:
    return bool(getattr(model, "is_oracle", False))


def with_skipped(result: tuple[dict, dict], selection) -> tuple[dict, dict]:
    """Attach the reader's ``skipped`` ([(item, reason)], corr3d.utils.reading) to the tables: the report names them."""
    metrics, tables = result
    return metrics, {**tables, "skipped": list(tables.get("skipped", [])) + list(getattr(selection, "skipped", []))}

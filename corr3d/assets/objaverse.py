"""Objaverse (1.0) objects through the official ``objaverse`` package: select uids, download GLBs, list them as specs.

The package keeps its cache under ``objaverse._VERSIONED_PATH`` (``~/.objaverse/hf-objaverse-v1``): an object present
there is returned without any network access, so re-running a download only fetches what is missing. Every
function here reads the module globals at call time, so pointing ``objaverse._VERSIONED_PATH`` elsewhere (tests,
``--cache-dir``) redirects all of them.

The resulting list file has one object per line, ``objaverse:<uid><TAB><local glb path>``; the first column is the
object spec the rest of corr3d understands (``data.train_objects`` / ``data.object_list``).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

from corr3d.errors import UnsafePathError
from corr3d.utils.optional import import_extra
from corr3d.utils.paths import ensure_within, safe_name
from corr3d.utils.io import atomic_write_text, write_json

SPEC_PREFIX = "objaverse:"


def set_cache_dir(versioned_path: str | os.PathLike) -> None:
    """Use ``versioned_path`` (the ``hf-objaverse-v1`` folder) as the objaverse cache for this process."""
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    objaverse._VERSIONED_PATH = str(versioned_path)
    objaverse.BASE_PATH = str(Path(versioned_path).parent)


def cache_dir() -> Path:
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    return Path(objaverse._VERSIONED_PATH)


UID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # Objaverse 1.0 uids are 32 hex digits


def validate_uid(uid: str) -> str:
    """``uid`` if it is a plain Objaverse uid (letters, digits, ``_``, ``-``); it names a directory under the render
    root, so anything else (``..``, ``/``, absolute paths) raises :class:`corr3d.errors.UnsafePathError`."""
    return safe_name(uid, "objaverse uid", pattern=UID_PATTERN,
                     fix="an Objaverse uid is 32 hex digits, e.g. objaverse:8476c4170df24cf5bbe6967222d1a42d")


def parse_uid(entry: str) -> str:
    """A uid from any of the forms seen in lists: ``uid``, ``uid.glb``, ``000-123/uid`` (authors' 10k.txt), specs.

    Only a ``<shard>/`` folder of plain digits and dashes may precede the uid; the uid itself is validated
    (:func:`validate_uid`), so ``../../victim/important`` is refused rather than silently shortened.
    """
    entry = entry.strip()
    if entry.startswith(SPEC_PREFIX):
        entry = entry[len(SPEC_PREFIX):]
    entry = entry.split("\t")[0]
    if "/" in entry:
        shard, _, rest = entry.rpartition("/")
        if re.fullmatch(r"(glbs/)?[0-9-]+", shard):
            entry = rest
    entry = entry[:-4] if entry.endswith(".glb") else entry
    return validate_uid(entry)


def read_uid_file(path: str | os.PathLike) -> list[str]:
    """Uids from a text file, one per line; blank lines and ``#`` comments skipped, order kept, duplicates dropped."""
    uids = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                uids.append(parse_uid(line))
            except UnsafePathError as err:
                raise UnsafePathError(f"line {number}: {err.message}", path=path, fix=err.fix) from None
    return list(dict.fromkeys(uids))


def lvis_uids(categories: Iterable[str]) -> list[str]:
    """Uids annotated with any of the LVIS ``categories`` (Objaverse-LVIS), in annotation order."""
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    annotations = objaverse.load_lvis_annotations()
    unknown = [c for c in categories if c not in annotations]
    if unknown:
        raise KeyError(f"unknown LVIS categories {unknown}; e.g. {sorted(annotations)[:5]}")
    return list(dict.fromkeys(uid for c in categories for uid in annotations[c]))


def select_uids(uid_file: str | os.PathLike | None = None, lvis_categories: Sequence[str] = (),
                count: int | None = None, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """The uids to fetch: from a list file and/or LVIS categories, else all of Objaverse; ``count`` draws a subset.

    The subset is a seeded random sample (not the first ``count``) so it is not biased to the first shard folders;
    sorting before sampling makes it independent of the order of the package's JSON. ``exclude``: uids (or any
    list entries / specs) never to select, e.g. a training list when picking held-out evaluation objects.
    """
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    candidates: list[str] = []
    if uid_file is not None:
        candidates += read_uid_file(uid_file)
    if lvis_categories:
        candidates += lvis_uids(lvis_categories)
    if uid_file is None and not lvis_categories:
        candidates = objaverse.load_uids()
    candidates = list(dict.fromkeys(candidates))
    excluded = {object_key(e) for e in exclude}
    if excluded:
        candidates = [u for u in candidates if object_key(u) not in excluded]
    if count is None or count >= len(candidates):
        return candidates
    if uid_file is not None and not lvis_categories:
        return candidates[:count]  # an explicit list is already the user's order of preference
    return random.Random(seed).sample(sorted(candidates), count)


_UID_LIKE = re.compile(r"^((glbs/)?[0-9-]+/)?[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\.glb)?$")


def object_key(entry: str) -> str:
    """The identity of an object spec or list entry, for overlap checks: ``objaverse:<uid>`` for Objaverse specs,
    authors' ``000-xxx/<uid>`` lines, ``uid.glb`` and bare uids; otherwise the spec itself (procedural, mesh paths)."""
    text = str(entry).strip().split("\t")[0].strip()
    if text.startswith(SPEC_PREFIX) or _UID_LIKE.match(text) and ":" not in text:
        return SPEC_PREFIX + parse_uid(text)
    return text


def check_disjoint(train_specs: Iterable[str], eval_specs: Iterable[str], train_name: str = "training",
                   eval_name: str = "evaluation", show: int = 5) -> None:
    """Refuse (ValueError naming a few objects) when the two object lists share an object (:func:`object_key`)."""
    train_keys = {object_key(s) for s in train_specs}
    overlap = sorted({object_key(s) for s in eval_specs} & train_keys)
    if overlap:
        names = ", ".join(overlap[:show]) + (f" ... ({len(overlap)} in all)" if len(overlap) > show else "")
        raise ValueError(f"the {train_name} and {eval_name} object lists overlap: {names}. Held-out evaluation needs "
                         "disjoint lists: write one with data_prep/make_heldout_list.py --uids-file <train list>")


def check_experiment_disjoint(cfg) -> None:
    """:func:`check_disjoint` of an experiment's training objects (``data.train_objects`` + ``data.object_list``,
    the first ``num_train_objects``) and its equivariance evaluation objects (``equivariance.objects`` +
    ``equivariance.object_list``); training and ``make eval`` call it before they start."""
    from corr3d.assets.experiment import evaluation_objects, object_specs  # circular by design: it reads our lists

    if cfg.data.get("kind", "rendered") != "rendered":
        return
    try:
        train = object_specs(cfg.data)
        evaluation = evaluation_objects(cfg.equivariance)
    except OSError:   # a list file is missing: the stage that reads it reports that with its own hint
        return
    if cfg.data.get("num_train_objects"):
        train = train[: int(cfg.data.num_train_objects)]
    check_disjoint(train, evaluation, "training (data.train_objects / data.object_list)",
                   "evaluation (equivariance.objects / equivariance.object_list)")


def download_objects(uids: Sequence[str], processes: int = 1) -> dict[str, Path]:
    """Local GLB paths for ``uids``, downloading missing ones with ``processes`` parallel workers.

    Uids unknown to Objaverse are skipped (the package warns). Already-cached objects cost no network access.
    """
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    paths = objaverse.load_objects(list(uids), download_processes=max(1, int(processes)))
    return {uid: Path(paths[uid]) for uid in uids if uid in paths}


def cached_object_path(uid: str) -> Path:
    """Path of an already-downloaded object, without network access (FileNotFoundError if it is not cached)."""
    index = cache_dir() / "object-paths.json.gz"
    if not index.exists():
        raise FileNotFoundError(f"no objaverse index at {index}; run data_prep/download_objaverse.py first")
    with gzip.open(index, "rt") as fh:
        relative = json.load(fh).get(parse_uid(uid))
    path = cache_dir() / relative if relative else None
    if path is not None:
        ensure_within(cache_dir(), path, "objaverse index entry")
    if path is None or not path.exists():
        raise FileNotFoundError(f"objaverse object {uid} is not in the cache {cache_dir()}")
    return path


def object_metadata(uids: Sequence[str]) -> dict[str, dict]:
    """Name, license and url of each uid from the package's per-shard metadata (downloaded if missing)."""
    objaverse = import_extra("objaverse")  # deferred: the [objaverse] extra, only Objaverse objects need it

    keep = ("name", "license", "uri", "viewerUrl")
    annotations = objaverse.load_annotations(list(uids))
    return {uid: {k: meta.get(k) for k in keep if k in meta} for uid, meta in annotations.items()}


def write_object_list(paths: dict[str, Path], out: str | os.PathLike,
                      metadata: dict[str, dict] | None = None) -> Path:
    """Write ``objaverse:<uid>\\t<path>`` lines (atomically) and, if given, ``<out>.meta.json`` with metadata."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(f"{SPEC_PREFIX}{uid}\t{path}\n" for uid, path in paths.items()))
    if metadata is not None:
        write_json(out.with_name(out.name + ".meta.json"), metadata, indent=1, sort_keys=True)
    return out


def read_object_list(path: str | os.PathLike) -> list[str]:
    """Object specs from a list file: the first tab-separated column of each non-empty, non-comment line."""
    specs = []
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            specs.append(line.split("\t")[0].strip())
    return specs


def fetch_objaverse(uid_file: str | os.PathLike | None = None, lvis_categories: Sequence[str] = (),
                    count: int | None = None, seed: int = 0, processes: int = 1,
                    out: str | os.PathLike = "data/objaverse_objects.txt", with_metadata: bool = True,
                    exclude: Iterable[str] = ()) -> dict:
    """Select, download (or reuse) and list Objaverse objects; returns a summary dict for the CLI."""
    uids = select_uids(uid_file, lvis_categories, count, seed, exclude=exclude)
    paths = download_objects(uids, processes)
    metadata = object_metadata(list(paths)) if with_metadata and paths else None
    write_object_list(paths, out, metadata)
    missing = [uid for uid in uids if uid not in paths]
    return {"requested": len(uids), "available": len(paths), "missing": missing, "list": str(out),
            "cache": str(cache_dir())}

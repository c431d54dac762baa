"""Render objects to disk: one object (atomic), many objects in parallel (resumable, with a manifest).

Atomicity: an object is rendered into ``<root>/.tmp-<name>-<pid>-<rand>/`` and renamed to ``<root>/<name>/`` when
complete (meta.json written last). A directory counts as done iff its meta.json parses and was produced with the
same render settings (hash), so a killed batch leaves no half-written object, and changing e.g. the resolution
re-renders instead of silently reusing stale views. ``<root>/manifest.json`` (written atomically by the parent
process) records per spec: status (done | failed), directory, error, seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from corr3d.assets.objects import load_object, object_dir_name
from corr3d.geometry import IcosphereCameras
from corr3d.render.raycast import PAPER_LIGHTS, Lighting, RaycastRenderer
from corr3d.render.store import FORMAT, FORMAT_VERSION

log = logging.getLogger(__name__)

RENDERER = "open3d-raycast"
RENDERER_VERSION = "1"
MANIFEST = "manifest.json"
# defaults identical to experiments/base.yaml data.render (used when a key is missing or no config is given)
DEFAULT_RENDER = {"width": 512, "height": 512, "focal": 560.0, "distance": 2.0, "icosphere_subdivisions": 1,
                  "background": [0, 0, 0], "up": [0.0, 1.0, 0.0], "lights": [list(x) for x in PAPER_LIGHTS],
                  "ambient": 0.3, "diffuse": 0.5, "shading": "lambert", "workers": 2, "png_compression": 1}
_OUTPUT_KEYS = ("width", "height", "focal", "distance", "icosphere_subdivisions", "background", "up", "lights",
                "ambient", "diffuse", "shading")  # settings that change the rendered output


def render_settings(render_cfg=None) -> dict:
    """Plain dict of render settings: ``render_cfg`` (DictConfig/dict, e.g. cfg.data.render) over the defaults."""
    settings = json.loads(json.dumps(DEFAULT_RENDER))
    if render_cfg is not None:
        try:
            from omegaconf import OmegaConf

            items = OmegaConf.to_container(render_cfg, resolve=True) if OmegaConf.is_config(render_cfg) \
                else dict(render_cfg)
        except ImportError:  # pragma: no cover
            items = dict(render_cfg)
        settings.update({k: v for k, v in items.items() if v is not None})
    return settings


def settings_hash(settings: dict) -> str:
    payload = {k: settings[k] for k in _OUTPUT_KEYS} | {"renderer": RENDERER_VERSION, "format": FORMAT_VERSION}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def is_complete(obj_dir: Path, settings: dict) -> bool:
    try:
        meta = json.loads((Path(obj_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT and meta.get("settings_hash") == settings_hash(settings)


# --------------------------------------------------------------------------------------------- one object
def render_object(spec: str, out_dir, render_cfg=None) -> Path:
    """Render all views of ``spec`` into ``out_dir`` (atomic: temp directory, then rename); returns ``out_dir``."""
    settings = render_settings(render_cfg)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        _render_into(spec, tmp, out_dir.name, settings)
        _publish(tmp, out_dir, settings)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _render_into(spec: str, directory: Path, object_id: str, settings: dict) -> None:
    start = time.perf_counter()
    mesh = load_object(spec)
    cameras = IcosphereCameras.from_config(settings)
    renderer = RaycastRenderer(mesh, Lighting.from_config(settings))
    depths = {}
    level = int(settings.get("png_compression", 1))
    for i, pose in enumerate(cameras.poses):
        view = renderer.render(cameras.K, pose, cameras.width, cameras.height, tuple(settings["background"]))
        Image.fromarray(view["rgb"]).save(directory / f"rgb_{i:03d}.png", compress_level=level)
        Image.fromarray(view["mask"].astype(np.uint8) * 255).save(directory / f"mask_{i:03d}.png",
                                                                  compress_level=level)
        depths[f"view_{i:03d}"] = view["depth"]
    np.savez_compressed(directory / "depth.npz", **depths)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "renderer": RENDERER,
            "renderer_version": RENDERER_VERSION, "object_id": object_id, "spec": str(spec),
            "width": cameras.width, "height": cameras.height, "K": cameras.K.tolist(),
            "poses": cameras.poses.tolist(), "num_views": cameras.num_views,
            "normalization": mesh.metadata.get("normalization"),
            "mesh": {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                     "visual": type(mesh.visual).__name__},
            "render_settings": {k: settings[k] for k in _OUTPUT_KEYS}, "settings_hash": settings_hash(settings),
            "render_seconds": round(time.perf_counter() - start, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the directory complete


def _publish(tmp: Path, out_dir: Path, settings: dict) -> None:
    """Move a finished temp directory into place, replacing a stale (other settings) render if there is one."""
    if out_dir.exists():
        if is_complete(out_dir, settings):  # someone else finished the same object meanwhile
            return
        old = out_dir.parent / f".old-{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        os.rename(out_dir, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, out_dir)


# --------------------------------------------------------------------------------------------- many objects
def _render_task(spec: str, root: str, settings: dict) -> dict:
    """Worker entry point: never raises for a bad object, reports it instead."""
    start = time.perf_counter()
    name = object_dir_name(spec)
    try:
        render_object(spec, Path(root) / name, settings)
        return {"spec": spec, "status": "done", "dir": name, "seconds": round(time.perf_counter() - start, 3)}
    except Exception as err:  # any failure of one object (corrupt/empty mesh...) must not stop the batch
        return {"spec": spec, "status": "failed", "dir": name, "error": f"{type(err).__name__}: {err}"[:500],
                "seconds": round(time.perf_counter() - start, 3)}


def read_manifest(root) -> dict:
    try:
        return json.loads((Path(root) / MANIFEST).read_text()).get("objects", {})
    except (OSError, ValueError):
        return {}


def _write_manifest(root: Path, objects: dict) -> None:
    from corr3d.utils.run_dir import atomic_write_text

    atomic_write_text(root / MANIFEST, json.dumps({"version": 1, "objects": objects}, indent=1, sort_keys=True))


def _process_alive(pid: int) -> bool:
    """True for a running process; a killed worker nobody has reaped yet (a zombie) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _clean_stale_temps(root: Path) -> None:
    """Remove temp directories left by killed processes (their pid is gone); live writers keep theirs."""
    for tmp in list(root.glob(".tmp-*")) + list(root.glob(".old-*")):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _process_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def render_batch(specs: Iterable[str], root, render_cfg=None, workers: int | None = None, progress: bool = True,
                 retry_failed: bool = True) -> dict:
    """Render every spec not yet complete under ``root``; returns the manifest entries of ``specs``.

    ``workers`` processes (default: render settings' ``workers``); 1 renders in this process. Failed objects are
    recorded and skipped; with ``retry_failed=False`` objects that failed in an earlier batch are not retried.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = render_settings(render_cfg)
    specs = list(dict.fromkeys(str(s) for s in specs))
    _clean_stale_temps(root)
    manifest = read_manifest(root)
    todo = []
    for spec in specs:
        name = object_dir_name(spec)
        if is_complete(root / name, settings):
            entry = {k: v for k, v in manifest.get(spec, {}).items() if k != "error"}
            manifest[spec] = entry | {"spec": spec, "status": "done", "dir": name}  # e.g. rendered by a SLURM chunk
        elif not retry_failed and manifest.get(spec, {}).get("status") == "failed":
            continue
        else:
            todo.append(spec)
    workers = max(1, int(settings.get("workers", 1) if workers is None else workers))
    bar = _progress(len(specs), len(specs) - len(todo), progress)
    record = _recorder(root, manifest, bar)
    if workers == 1 or len(todo) <= 1:
        for spec in todo:
            record(_render_task(spec, str(root), settings))
    else:
        _render_parallel(todo, root, settings, min(workers, len(todo)), record)
    bar.close()
    _write_manifest(root, manifest)
    return {spec: manifest[spec] for spec in specs if spec in manifest}


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="render", unit="obj", disable=not enabled)


def _recorder(root: Path, manifest: dict, bar):
    def record(result: dict) -> None:
        result["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        manifest[result["spec"]] = result
        _write_manifest(root, manifest)  # after every object, so a kill loses at most the objects in flight
        if result["status"] != "done":
            log.warning("render failed for %s: %s", result["spec"], result.get("error"))
        bar.update(1)

    return record


def _render_parallel(todo: list[str], root: Path, settings: dict, workers: int, record, attempts: int = 2) -> None:
    """Process pool (spawn: open3d/TBB threads do not survive fork); a crashed worker (e.g. a segfault in a mesh
    library) breaks the pool, so unfinished objects are retried in a fresh pool, then recorded as failed."""
    pending = list(todo)
    for attempt in range(attempts):
        crashed = []
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_render_task, spec, str(root), settings): spec for spec in pending}
            for future in as_completed(futures):
                try:
                    record(future.result())
                except BrokenProcessPool:
                    crashed.append(futures[future])
        if not crashed:
            return
        pending = crashed
    for spec in pending:
        record({"spec": spec, "status": "failed", "dir": object_dir_name(spec),
                "error": "worker process crashed while rendering"})


def ensure_rendered(specs: Iterable[str], root, render_cfg=None, workers: int | None = None,
                    progress: bool = False) -> list[Path]:
    """Object directories for ``specs`` (in order), rendering what is missing; failed objects are logged and left
    out. Raises RuntimeError if objects were requested and none could be rendered."""
    specs = list(specs)
    if not specs:
        return []
    entries = render_batch(specs, root, render_cfg, workers=workers, progress=progress)
    dirs = [Path(root) / entries[s]["dir"] for s in map(str, specs) if entries.get(s, {}).get("status") == "done"]
    if not dirs:
        errors = "; ".join(f"{s}: {entries.get(str(s), {}).get('error')}" for s in specs[:5])
        raise RuntimeError(f"none of the {len(specs)} objects could be rendered ({errors})")
    return dirs


def render_experiment_objects(cfg, workers: int | None = None, progress: bool = True) -> dict:
    """``corr3d render EXP``: render data.train_objects (first num_train_objects), data.val_objects and
    equivariance.objects under data.rendered_dir; returns the manifest entries."""
    train = list(cfg.data.train_objects)
    if cfg.data.get("num_train_objects"):
        train = train[: int(cfg.data.num_train_objects)]
    specs = train + list(cfg.data.val_objects) + list(cfg.equivariance.objects)
    entries = render_batch(specs, Path(cfg.data.rendered_dir), cfg.data.render, workers=workers, progress=progress)
    failed = [s for s, e in entries.items() if e["status"] != "done"]
    print(f"rendered {len(entries) - len(failed)}/{len(entries)} objects under {cfg.data.rendered_dir}"
          + (f"; failed: {', '.join(failed[:10])}" if failed else ""))
    return entries

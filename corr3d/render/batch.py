"""Render objects to disk: one object (atomic), many objects in parallel (resumable, with a manifest).

Atomicity: an object is rendered into ``<root>/.tmp-<name>@<host>@<pid>@<rand>/`` and renamed to ``<root>/<name>/``
when complete (meta.json written last). A directory counts as done iff its meta.json parses, was produced with the
same render settings (hash), and every image/depth file it lists is present with its recorded size (a truncated PNG
is not complete; ``verify="decode"`` also checks the PNG checksums). Every PNG is read back and compared with its
encoded bytes before meta.json is written, so a view that does not read back whole is never counted. A killed
batch leaves no half-written object, and changing e.g. the resolution re-renders instead of silently reusing stale
views. ``<root>/manifest.json`` (written atomically, under a flock of ``<root>`` itself, merging with what other
processes recorded) records per spec: status (done | failed), directory, error, seconds; ``<root>/failed.json``
(rewritten with it) lists the failed ones: ``{"version": 1, "objects": [{"spec", "dir", "error", "updated"}, ...]}``
(:func:`read_failed`).

An object that covers fewer than ``MIN_FOREGROUND_PIXELS`` pixels in every view (a zero-area mesh: all triangles
degenerate) is a failed render (``EmptyRenderError``), never done. ``corr3d render`` tries every object, then
raises :class:`corr3d.errors.RenderFailedError` listing the failures (non-zero exit).

Shared filesystems: temp directories carry host and pid; a batch removes only temps of dead processes on its own
host (temps of other hosts only once older than ``FOREIGN_TEMP_MAX_AGE_S``), so a render on another node never
deletes a live renderer's files. Object directory names come from validated specs and are joined under the root
with :func:`corr3d.utils.paths.safe_join` (``..``, absolute paths and symlinks out of the root are refused).

Workers die with their parent: each pool worker sets ``PR_SET_PDEATHSIG`` (Linux) and runs a thread that exits
when its parent pid changes, so a SIGKILLed ``corr3d render`` leaves no orphaned renderers.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from corr3d.assets.experiment import experiment_objects
from corr3d.assets.objects import load_object, object_dir_name
from corr3d.config_schema import RenderConfig
from corr3d.errors import Corr3dUserError, RenderFailedError
from corr3d.geometry import IcosphereCameras
from corr3d.render.raycast import Lighting, RaycastRenderer
from corr3d.render.store import FORMAT, FORMAT_VERSION, MIN_FOREGROUND
from corr3d.utils.io import replace_dir
from corr3d.utils.paths import safe_join
from corr3d.utils.reading import ItemList
from corr3d.utils.io import write_json
from corr3d.utils.run_dir import directory_lock, process_alive

log = logging.getLogger(__name__)

RENDERER = "open3d-raycast"
RENDERER_VERSION = "1"
MANIFEST = "manifest.json"
FAILED = "failed.json"  # the manifest's failed objects: {"version": 1, "objects": [{spec, dir, error, updated}]}
MIN_FOREGROUND_PIXELS = MIN_FOREGROUND  # an object covering fewer pixels in every view did not render (zero area)
FOREIGN_TEMP_MAX_AGE_S = 2 * 24 * 3600  # another host's temp dir this old is abandoned (no render takes 2 days)
_OUTPUT_KEYS = ("width", "height", "focal", "distance", "icosphere_subdivisions", "background", "up", "lights",
                "lights_follow_camera", "ambient", "diffuse", "shading")  # settings that change the rendered output


class EmptyRenderError(RuntimeError):
    """The mesh rendered to (almost) no foreground pixels in every view: a failed render, not a done one."""


def render_settings(render_cfg=None) -> dict:
    """Plain dict of render settings. A loaded config's ``cfg.data.render`` (typed by the schema, which gave it its
    defaults) is taken as it is; a partial mapping (or None) goes over the schema's ``RenderConfig`` defaults."""
    if OmegaConf.is_config(render_cfg) and OmegaConf.get_type(render_cfg) is RenderConfig:
        return OmegaConf.to_container(render_cfg, resolve=True)
    settings = dataclasses.asdict(RenderConfig())
    if render_cfg is not None:
        items = OmegaConf.to_container(render_cfg, resolve=True) if OmegaConf.is_config(render_cfg) \
            else dict(render_cfg)
        settings.update({k: v for k, v in items.items() if v is not None})
    return settings


def render_rig(render_cfg=None) -> tuple[IcosphereCameras, Lighting]:
    """The cameras and lights of a ``data.render`` section (or a :func:`render_settings` dict)."""
    s = render_settings(render_cfg)
    cameras = IcosphereCameras(subdivisions=s["icosphere_subdivisions"], distance=s["distance"], width=s["width"],
                               height=s["height"], focal=s["focal"], up=tuple(s["up"]),
                               views=s["views"])
    lighting = Lighting(lights=tuple(map(tuple, s["lights"])), ambient=s["ambient"], diffuse=s["diffuse"],
                        mode=s["shading"], follow_camera=s["lights_follow_camera"])
    return cameras, lighting


def settings_hash(settings: dict) -> str:
    payload = {k: settings[k] for k in _OUTPUT_KEYS} | {"renderer": RENDERER_VERSION, "format": FORMAT_VERSION}
    if settings["views"] != "corr3d":   # the authors' cameras; corr3d's keep their earlier hashes
        payload["views"] = settings["views"]
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def is_complete(obj_dir: Path, settings: dict, verify: str = "size") -> bool:
    """Done with these settings: meta.json matches and the files it lists are intact.

    ``verify="size"`` (default, a stat per file) compares each listed file's size with the one recorded at render
    time, which catches truncated copies; ``"decode"`` also checks every PNG's chunk checksums (PIL ``verify``).
    Renders from before file lists were recorded are checked for presence and, with ``"decode"``, checksums.
    """
    obj_dir = Path(obj_dir)
    try:
        meta = json.loads((obj_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format") != FORMAT or meta.get("settings_hash") != settings_hash(settings):
        return False
    files = meta.get("files")
    if not isinstance(files, dict):
        n = int(meta.get("num_views", 0))
        files = {f"{kind}_{i:03d}.png": None for i in range(n) for kind in ("rgb", "mask")} | {"depth.npz": None}
    for name, size in files.items():
        path = obj_dir / name
        try:
            if size is not None and path.stat().st_size != int(size):
                return False
            if size is None and not path.is_file():
                return False
        except OSError:
            return False
        if verify == "decode" and name.endswith(".png") and not png_intact(path):
            return False
    return True


def png_intact(path: Path) -> bool:
    """True when ``path`` is a PNG whose chunks and checksums are intact (no full decode)."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises OSError/SyntaxError/ValueError for broken files
        return False


def _write_png(path: Path, array: np.ndarray, level: int) -> None:
    """Encode ``array`` as PNG (the same bytes as ``Image.save(path)``), write it, and read the file back: a view
    counts only if the file holds exactly the encoded bytes (full disk, broken FS...).

    Comparing the bytes read back with PIL's in-memory encoding proves what decoding the file back proved (the file
    is a whole PNG of this image) at a fraction of the cost (a decode took ~1/3 of the encode time)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    data = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        back = path.read_bytes()
    except OSError as err:
        raise OSError(f"{path} cannot be read back after writing: {err}") from err
    if back != data:
        raise OSError(f"{path} reads back {len(back)} bytes that differ from the {len(data)} written")


DEPTH_DEFLATE_LEVEL = 1  # zlib level of depth.npz: half the CPU of np.savez_compressed's level 6, ~6 % larger


def _save_depths(path: Path, depths: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed(path, **depths)``'s layout (a zip of ``<name>.npy`` members, read by ``np.load``) at
    deflate level ``DEPTH_DEFLATE_LEVEL``: the arrays are the same, the compression is faster."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=DEPTH_DEFLATE_LEVEL) as archive:
        for name, array in depths.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


# --------------------------------------------------------------------------------------------- one object
def render_object(spec: str, out_dir, render_cfg=None) -> Path:
    """Render all views of ``spec`` into ``out_dir`` (atomic: temp directory, then rename); returns ``out_dir``."""
    settings = render_settings(render_cfg)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / _temp_name("tmp", out_dir.name)
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
    cameras, lighting = render_rig(settings)
    renderer = RaycastRenderer(mesh, lighting)
    depths, foreground = {}, []
    level = settings["png_compression"]
    for i, pose in enumerate(cameras.poses):
        view = renderer.render(cameras.K, pose, cameras.width, cameras.height, tuple(settings["background"]))
        if not np.isfinite(view["depth"]).all():
            raise ValueError(f"view {i}: the renderer returned non-finite depth (NaN/inf geometry in the mesh?)")
        foreground.append(int(np.count_nonzero(view["mask"])))
        _write_png(directory / f"rgb_{i:03d}.png", view["rgb"], level)
        _write_png(directory / f"mask_{i:03d}.png", view["mask"].astype(np.uint8) * 255, level)
        depths[f"view_{i:03d}"] = view["depth"]
    if max(foreground, default=0) < MIN_FOREGROUND_PIXELS:
        raise EmptyRenderError(f"no view shows the object: at most {max(foreground, default=0)} foreground pixels in "
                               f"each of the {len(foreground)} views (fewer than {MIN_FOREGROUND_PIXELS}); the mesh "
                               f"has {len(mesh.faces)} faces and zero visible area (degenerate triangles?)")
    _save_depths(directory / "depth.npz", depths)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.suffix in (".png", ".npz")}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "renderer": RENDERER,
            "renderer_version": RENDERER_VERSION, "object_id": object_id, "spec": str(spec),
            "width": cameras.width, "height": cameras.height, "K": cameras.K.tolist(),
            "poses": cameras.poses.tolist(), "num_views": cameras.num_views,
            "normalization": mesh.metadata.get("normalization"),
            "mesh": {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                     "visual": type(mesh.visual).__name__},
            "foreground_pixels": foreground,
            "render_settings": {k: settings[k] for k in _OUTPUT_KEYS}, "settings_hash": settings_hash(settings),
            "render_seconds": round(time.perf_counter() - start, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": files}
    write_json(directory / "meta.json", meta, indent=1)  # last: marks the directory complete


def _publish(tmp: Path, out_dir: Path, settings: dict) -> None:
    """Move a finished temp directory into place, replacing a stale (other settings) render if there is one."""
    if out_dir.exists():
        if is_complete(out_dir, settings):  # someone else finished the same object meanwhile
            return
    replace_dir(tmp, out_dir, old=out_dir.parent / _temp_name("old", out_dir.name))


# --------------------------------------------------------------------------------------------- many objects
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Pool-worker initializer: end this process when ``parent_pid`` dies (even by SIGKILL).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` — the kernel kills the worker when its parent exits. Everywhere
    (and as a backstop for the race where the parent died before prctl ran): a daemon thread that exits the process
    once the parent pid changes (re-parented to init/a subreaper).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the watcher thread still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="corr3d-parent-watch", daemon=True).start()


def _render_task(spec: str, root: str, settings: dict) -> dict:
    """Worker entry point: never raises for a bad object, reports it instead."""
    start = time.perf_counter()
    try:
        name = object_dir_name(spec)
        render_object(spec, safe_join(root, name, what="object directory"), settings)
        return {"spec": spec, "status": "done", "dir": name, "seconds": round(time.perf_counter() - start, 3)}
    except Exception as err:  # any failure of one object (corrupt/empty mesh...) must not stop the batch
        return {"spec": spec, "status": "failed", "dir": locals().get("name"), "error": f"{type(err).__name__}: {err}"[:500],
                "seconds": round(time.perf_counter() - start, 3)}


def read_manifest(root) -> dict:
    try:
        return json.loads((Path(root) / MANIFEST).read_text()).get("objects", {})
    except (OSError, ValueError):
        return {}


def read_failed(root) -> list[dict]:
    """The failed objects recorded in ``<root>/failed.json``: ``[{"spec", "dir", "error", "updated"}]`` ([] when
    there is none)."""
    try:
        return list(json.loads((Path(root) / FAILED).read_text()).get("objects", []))
    except (OSError, ValueError, AttributeError):
        return []


def _write_manifest(root: Path, objects: dict) -> None:
    """Merge ``objects`` into the manifest on disk under a file lock: concurrent batches on one root (SLURM chunks,
    two shells) each add their objects instead of overwriting each other's records. ``failed.json`` (the merged
    manifest's failed objects, so an object rendered later leaves it) is rewritten with it, atomically."""
    with directory_lock(root):
        merged = read_manifest(root)
        merged.update(objects)
        write_json(root / MANIFEST, {"version": 1, "objects": merged}, indent=1, sort_keys=True)
        failed = [{"spec": spec, "dir": e.get("dir"), "error": e.get("error"), "updated": e.get("updated")}
                  for spec, e in sorted(merged.items()) if e.get("status") != "done"]
        write_json(root / FAILED, {"version": 1, "objects": failed}, indent=1)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def _temp_name(kind: str, name: str) -> str:
    """``.<kind>-<name>@<host>@<pid>@<rand>``: '@' never occurs in object names or sanitised host names."""
    return f".{kind}-{name}@{_host_tag()}@{os.getpid()}@{uuid.uuid4().hex[:6]}"


def _process_alive(pid: int) -> bool:
    return process_alive(pid)


def _temp_owner(tmp: Path) -> tuple[str | None, int | None]:
    """(host, pid) of a temp directory name; (None, pid) for the old ``.tmp-<name>-<pid>-<rand>`` names."""
    parts = tmp.name.rsplit("@", 3)
    if len(parts) == 4:
        try:
            return parts[1], int(parts[2])
        except ValueError:
            return None, None
    try:
        return None, int(tmp.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None, None


def _clean_stale_temps(root: Path) -> None:
    """Remove temp directories of dead processes on this host; other hosts' (and host-less old) temps only when
    older than FOREIGN_TEMP_MAX_AGE_S, since their pids mean nothing here."""
    now = time.time()
    for tmp in list(root.glob(".tmp-*")) + list(root.glob(".old-*")):
        host, pid = _temp_owner(tmp)
        if pid is None or tmp.is_symlink():
            continue
        if host == _host_tag():
            stale = not _process_alive(pid)
        else:
            try:
                stale = now - tmp.stat().st_mtime > FOREIGN_TEMP_MAX_AGE_S
            except OSError:
                continue
        if stale:
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
        try:
            name = object_dir_name(spec)
            safe_join(root, name, what="object directory")
        except Corr3dUserError as err:  # a spec that would address a path outside root: refused, nothing written
            manifest[spec] = {"spec": spec, "status": "failed", "dir": None, "error": f"invalid spec: {err}"}
            log.warning("render: refusing object spec %r: %s", spec, err)
            continue
        if is_complete(root / name, settings):
            entry = {k: v for k, v in manifest.get(spec, {}).items() if k != "error"}
            manifest[spec] = entry | {"spec": spec, "status": "done", "dir": name}  # e.g. rendered by a SLURM chunk
        elif not retry_failed and manifest.get(spec, {}).get("status") == "failed":
            continue
        else:
            todo.append(spec)
    workers = max(1, settings["workers"] if workers is None else workers)
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
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
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


def _failures(entries: dict, specs: list[str]) -> list[tuple[str, str]]:
    """``[(spec, reason)]`` of the requested ``specs`` that are not done."""
    out = []
    for spec in specs:
        entry = entries.get(spec)
        if entry is None:
            out.append((spec, "not rendered (no manifest entry)"))
        elif entry.get("status") != "done":
            out.append((spec, str(entry.get("error") or entry.get("status"))))
    return out


def _failure_list(failed: list[tuple[str, str]], limit: int = 10) -> str:
    text = "; ".join(f"{spec}: {reason}" for spec, reason in failed[:limit])
    return text + (f"; ... (+{len(failed) - limit} more)" if len(failed) > limit else "")


def ensure_rendered(specs: Iterable[str], root, render_cfg=None, workers: int | None = None,
                    progress: bool = False) -> ItemList:
    """Object directories for ``specs`` (in order), rendering what is missing, as an
    :class:`~corr3d.utils.reading.ItemList`: failed objects are left out, logged, and listed in ``.skipped`` as
    ``(spec, reason)`` (and in ``<root>/failed.json``). Raises :class:`corr3d.errors.RenderFailedError` (a
    RuntimeError) if objects were requested and none could be rendered."""
    specs = [str(s) for s in specs]
    if not specs:
        return ItemList()
    entries = render_batch(specs, root, render_cfg, workers=workers, progress=progress)
    dirs = [safe_join(root, entries[s]["dir"], what="object directory") for s in specs
            if entries.get(s, {}).get("status") == "done"]
    failed = _failures(entries, specs)
    if not dirs:
        raise RenderFailedError(f"none of the {len(specs)} objects could be rendered ({_failure_list(failed, 5)})",
                                path=Path(root) / FAILED,
                                fix="check the listed meshes (corrupt, empty or zero-area) or remove them from the "
                                    "object lists")
    return ItemList(dirs, failed)


def render_experiment_objects(cfg, workers: int | None = None, progress: bool = True) -> dict:
    """``corr3d render EXP``: render the experiment's objects (``corr3d.assets.experiment``: training, validation
    and evaluation, object lists included) under data.rendered_dir; returns the manifest entries.

    A failed object does not stop the batch; once every object was tried, any failure raises
    :class:`corr3d.errors.RenderFailedError` listing the failed objects and reasons (``corr3d render`` exits
    non-zero); they are also in ``<data.rendered_dir>/failed.json``."""
    root = Path(cfg.data.rendered_dir)
    specs = list(dict.fromkeys(str(s) for s in experiment_objects(cfg).all()))
    entries = render_batch(specs, root, cfg.data.render, workers=workers, progress=progress)
    failed = _failures(entries, specs)
    print(f"rendered {len(specs) - len(failed)}/{len(specs)} objects under {cfg.data.rendered_dir}"
          + (f"; failed: {', '.join(spec for spec, _ in failed[:10])}" if failed else ""))
    if failed:
        raise RenderFailedError(f"{len(failed)} of {len(specs)} objects failed to render: {_failure_list(failed)}",
                                path=root / FAILED,
                                fix="fix or replace the listed meshes (corrupt, empty or zero-area) or remove them "
                                    "from the experiment's object lists, then run `corr3d render` again (finished "
                                    "objects are kept)")
    return entries

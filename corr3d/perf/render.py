"""Render throughput: seconds per object (all icosphere views at the configured size, default 42 x 512²),
including mesh loading, ray casting, shading and writing PNGs + depth.npz (``render_object``).

Per-object times are steady state: one object is rendered first so the one-time costs of a render process (the
open3d import, the sh3d catalog read) are not charged to every object; they are reported on their own, measured in
fresh processes (``import_*_s``, ``sh3d_catalog_*_s``): a render worker pays them once and then renders many objects.
``cpu_s_*`` is this process's CPU time (all its threads), the figure least skewed by other jobs on a shared machine;
with ``data.render.workers`` processes on as many cores, objects per second is about workers / cpu_s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from corr3d.assets.meshes import assemble, parametric_part
from corr3d.assets.objects import PROCEDURAL_OBJECTS, bumpy, texture
from corr3d.errors import Corr3dUserError
from corr3d.render.batch import render_batch, render_object, render_settings

SH3D_OBJECTS = 4  # sh3d objects timed (the first of the committed training split), 2 with quick


def textured_sphere_mesh(triangles: int, seed: int = 0) -> trimesh.Trimesh:
    """A bumpy UV sphere with a photo texture and about ``triangles`` faces."""
    rng = np.random.default_rng(seed)
    nu = int(np.sqrt(triangles))
    nv = max(2, triangles // (2 * nu))

    def fn(u, v):
        theta, phi = 2 * np.pi * u, np.pi * (v - 0.5)
        return 0.5 * np.stack([np.cos(phi) * np.cos(theta), np.sin(phi), -np.cos(phi) * np.sin(theta)], -1)

    part = bumpy(parametric_part(fn, nu, nv, texture("astronaut", rng)), rng, 0.15, waves=10, max_freq=8)
    return assemble([part])


def _time_render(spec: str, root: Path, settings: dict) -> tuple[float, float]:
    """(wall, CPU) seconds; CPU time of this process is the load-independent figure on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    render_object(spec, root / f"obj_{abs(hash(spec))}", settings)
    return time.perf_counter() - start, time.process_time() - cpu


def sh3d_specs(count: int) -> list[str]:
    """The first ``count`` objects of the committed sh3d training split, [] when the Debian package (its
    ``.sh3f`` libraries, :func:`corr3d.assets.sh3d.library_files`) is not installed."""
    from corr3d.assets import sh3d

    try:
        sh3d.library_files()
    except Corr3dUserError:
        return []
    return sh3d.load_split("train")[:count]


_IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import corr3d.render.batch
out = {"import_corr3d_render_s": time.perf_counter() - start}
start = time.perf_counter()
if sys.argv[1] == "plain":
    import open3d
else:
    from corr3d.render.raycast import import_open3d
    import_open3d()
out["open3d_s"] = time.perf_counter() - start
out["dash_imported"] = "dash" in sys.modules
if sys.argv[2] == "sh3d":
    from corr3d.assets import sh3d
    start = time.perf_counter()
    sh3d.catalog()
    out["catalog_s"] = time.perf_counter() - start
print(json.dumps(out))
"""


def _probe(mode: str, with_sh3d: bool, cache: str) -> dict:
    env = dict(os.environ, CORR3D_CACHE=cache)
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, mode, "sh3d" if with_sh3d else "-"], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_seconds(with_sh3d: bool) -> dict[str, float | bool]:
    """One-time costs of a fresh render process: importing corr3d's renderer, open3d (as the renderer imports it,
    and plain ``import open3d`` with its visualization/dash import, for comparison) and the sh3d catalog read
    with an empty cache (parsing the zips) and with the on-disk cache filled."""
    with tempfile.TemporaryDirectory() as cache:
        cold = _probe("renderer", with_sh3d, cache)
        warm = _probe("renderer", with_sh3d, cache)
        plain = _probe("plain", False, cache)
    out: dict[str, float | bool] = {
        "import_corr3d_render_s": round(warm["import_corr3d_render_s"], 2),
        "import_open3d_renderer_s": round(warm["open3d_s"], 2),
        "import_open3d_plain_s": round(plain["open3d_s"], 2),
        "renderer_imports_dash": warm["dash_imported"]}
    if with_sh3d:
        out["sh3d_catalog_parse_s"] = round(cold["catalog_s"], 2)
        out["sh3d_catalog_cached_s"] = round(warm["catalog_s"], 2)
    return out


def _summary(results: dict, name: str, times: np.ndarray) -> None:
    results[f"{name}_objects"] = len(times)
    results[f"s_per_object_{name}_mean"] = round(float(times[:, 0].mean()), 2)
    results[f"s_per_object_{name}_max"] = round(float(times[:, 0].max()), 2)
    results[f"cpu_s_per_object_{name}_mean"] = round(float(times[:, 1].mean()), 2)


def run(quick: bool = False) -> dict[str, float | str]:
    settings = render_settings(None)  # the paper's setup: 42 views, 512x512, f = 560
    results: dict[str, float | str | bool] = {"views": 42,
                                              "image_size": f"{settings['width']}x{settings['height']}"}
    sh3d = sh3d_specs(2 if quick else SH3D_OBJECTS)
    results.update(import_seconds(bool(sh3d)))
    if not sh3d:
        results["sh3d"] = "not installed (apt-get install sweethome3d-furniture)"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wall, _ = _time_render(f"procedural:{PROCEDURAL_OBJECTS[0]}", root / "warmup", settings)
        results["first_object_in_process_s"] = round(wall, 2)  # open3d import + pixel grid: once per process
        sizes = (30_000,) if quick else (30_000, 100_000)
        for tri in sizes:
            mesh = textured_sphere_mesh(tri)
            path = root / f"sphere_{tri}.glb"
            mesh.export(path)
            results[f"faces_{tri // 1000}k"] = int(len(mesh.faces))
            wall, cpu = _time_render(str(path), root, settings)
            results[f"s_per_object_glb_{tri // 1000}k"] = round(wall, 2)
            results[f"cpu_s_per_object_glb_{tri // 1000}k"] = round(cpu, 2)
        names = PROCEDURAL_OBJECTS[:4] if quick else PROCEDURAL_OBJECTS
        _summary(results, "procedural", np.array([_time_render(f"procedural:{n}", root, settings) for n in names]))
        if sh3d:
            from corr3d.assets import sh3d as sh3d_module

            for spec in sh3d:  # extracting a model from its zip happens once per machine (cached): not timed
                sh3d_module.extract(sh3d_module.entry(spec))
            _summary(results, "sh3d", np.array([_time_render(spec, root, settings) for spec in sh3d]))
        obj_dir = next(p for p in root.iterdir() if p.is_dir() and p.name.startswith("obj_"))
        results["mb_per_object"] = round(sum(f.stat().st_size for f in obj_dir.iterdir()) / 2 ** 20, 1)
        if not quick:  # the batch renderer as `corr3d render` runs it: worker start-up included
            specs = [f"procedural:{n}" for n in PROCEDURAL_OBJECTS] + sh3d
            workers = int(settings["workers"])
            start = time.perf_counter()
            render_batch(specs, root / "batch", settings, workers=workers, progress=False)
            results[f"batch_{workers}_workers_s_per_object"] = round((time.perf_counter() - start) / len(specs), 2)
            results["batch_objects"] = len(specs)
    return results

"""Render throughput: seconds per object (all icosphere views at the configured size, default 42 x 512²),
including mesh building, ray casting, shading and writing PNGs + depth.npz (``render_object``)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from corr3d.assets.meshes import assemble, parametric_part
from corr3d.assets.objects import PROCEDURAL_OBJECTS, bumpy, texture
from corr3d.render.batch import render_object, render_settings


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


def run(quick: bool = False) -> dict[str, float | str]:
    settings = render_settings(None)  # the paper's setup: 42 views, 512x512, f = 560
    results: dict[str, float | str] = {"views": 42, "image_size": f"{settings['width']}x{settings['height']}"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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
        times = np.array([_time_render(f"procedural:{n}", root, settings) for n in names])
        results["procedural_objects"] = len(names)
        results["s_per_object_procedural_mean"] = round(float(times[:, 0].mean()), 2)
        results["s_per_object_procedural_max"] = round(float(times[:, 0].max()), 2)
        results["cpu_s_per_object_procedural_mean"] = round(float(times[:, 1].mean()), 2)
        obj_dir = next(p for p in root.iterdir() if p.is_dir() and p.name.startswith("obj_"))
        results["mb_per_object"] = round(sum(f.stat().st_size for f in obj_dir.iterdir()) / 2 ** 20, 1)
    return results

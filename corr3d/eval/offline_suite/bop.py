"""Synthetic YCB-V-like set in the exact BOP layout (read by corr3d/eval/datasets/bop.py, like the real one).

Scenes are table-top arrangements of three held-out real textured objects (v5: SweetHome3D models of the classes no
training run sees, sh3d split ``test_unseen_categories``, docs/real_objects.md; v4's procedural photo-textured shapes
could be matched by colour alone). Each object appears in two scenes, with another yaw, filmed by a camera circling
the table at a bobbing elevation. Objects are rendered one by one with the ray-caster and composited by depth, which
gives ``mask_visib`` (z-test) and the depth image; poses, intrinsics and depth are exact. Units are BOP's: mm
(objects ~``OBJECT_MM`` across), depth_scale 0.1. The wine bottle (obj 3) is declared rotationally symmetric about
its axis in models_info.json (its shape is), so the ADD-S branch of the metric is exercised. The CC-BY models are
credited in ``ATTRIBUTION.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from corr3d.assets.objects import load_object
from corr3d.assets.sh3d import write_attribution
from corr3d.eval.offline_suite.common import (
    background,
    camera_effects,
    held_out_objects,
    orbit_pose,
    render,
    save_image,
)
from corr3d.geometry import intrinsics
from corr3d.utils.io import write_json

# obj_id -> spec: 6 real objects of the classes never trained on, evenly spaced over the split file
# (common.held_out_objects): a pool table, a beer bottle, a wine bottle, two water heaters and a medicine bottle
OBJECTS = {i + 1: spec for i, spec in enumerate(held_out_objects("test_unseen_categories", 6))}
# obj 3, sh3d:KatorLegaz/red-wine-bottle-01, is a solid of revolution about y (tests/eval/test_offline_suite.py
# checks the shape; its label is not symmetric, like v4's photo-textured vase). The other bottles and the electric
# water heater are round too but stay undeclared, so ADD and ADD-S are both exercised
SYMMETRIC = {3: [{"axis": [0, 1, 0], "offset": [0, 0, 0]}]}
# scene_id -> [(obj_id, position on the table (x, z) in object units, yaw degrees)]
SCENES = {48: [(1, (-0.75, 0.0), 20.0), (2, (0.7, 0.25), -35.0), (3, (0.0, -0.8), 60.0)],
          49: [(4, (-0.7, 0.3), 10.0), (5, (0.75, -0.1), 45.0), (6, (0.0, -0.85), 0.0)],
          50: [(1, (0.7, -0.3), 150.0), (4, (-0.6, -0.4), 200.0), (3, (0.05, 0.75), -20.0)],
          51: [(2, (-0.7, -0.2), 120.0), (6, (0.7, 0.3), 90.0), (5, (0.0, 0.8), 250.0)]}
FRAMES = 24                 # per scene; eval.pose_ycbv.ref_step 4 -> 6 reference views, 18 query images
WIDTH, HEIGHT = 256, 192
FOCAL = 300.0
OBJECT_MM = 120.0           # a unit-extent object is 12 cm across
DEPTH_SCALE = 0.1           # as YCB-V: depth in mm = value * 0.1


def _object_to_world(pos_xz, yaw_deg: float, lift: float) -> np.ndarray:
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = [pos_xz[0], lift, pos_xz[1]]
    return T


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return [-1, -1, -1, -1]
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def _write_models(out: Path, meshes: dict) -> None:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    info = {}
    for obj_id, mesh in meshes.items():
        scaled = mesh.copy()
        scaled.apply_scale(OBJECT_MM)
        scaled.export(models / f"obj_{obj_id:06d}.ply")
        v = np.asarray(scaled.vertices)
        from scipy.spatial import ConvexHull  # free here: trimesh (imported above) has loaded it
        from scipy.spatial.distance import pdist  # free here: trimesh (imported above) has loaded it

        hull = v[ConvexHull(v).vertices]
        lo, size = v.min(0), v.max(0) - v.min(0)
        entry = {"diameter": float(pdist(hull).max()), "min_x": float(lo[0]), "min_y": float(lo[1]),
                 "min_z": float(lo[2]), "size_x": float(size[0]), "size_y": float(size[1]), "size_z": float(size[2])}
        if obj_id in SYMMETRIC:
            entry["symmetries_continuous"] = SYMMETRIC[obj_id]
        info[str(obj_id)] = entry
    write_json(models / "models_info.json", info, indent=1)


def _write_scene(root: Path, scene_id: int, layout, meshes: dict) -> None:
    K = intrinsics(FOCAL, WIDTH, HEIGHT)
    scene_dir = root / f"{scene_id:06d}"
    placements = {obj_id: _object_to_world(pos, yaw, -meshes[obj_id].bounds[0][1]) for obj_id, pos, yaw in layout}
    centre = np.array([0.0, 0.35, 0.0])
    k = np.arange(FRAMES)
    cams = [orbit_pose(scene_id * 17.0 + 300.0 * i / FRAMES, 32.0 + 10.0 * np.sin(i / 4.0),
                       3.6 + 0.3 * np.sin(i / 5.0), target=centre) for i in k]
    renders = {}
    for obj_id, place in placements.items():
        poses = np.stack([cam @ place for cam in cams])
        renders[obj_id] = (poses, render(meshes[obj_id], K, poses, WIDTH, HEIGHT))
    obj_ids = list(placements)
    scene_gt, scene_camera, scene_info, images = {}, {}, {}, []
    for i in range(FRAMES):
        depth = np.stack([np.where(renders[o][1]["mask"][i], renders[o][1]["depth"][i], np.inf) for o in obj_ids])
        front = depth.argmin(0)
        zmin = depth.min(0)
        any_obj = np.isfinite(zmin)
        rgb = background(HEIGHT, WIDTH, scene_id * 1000 + i)
        gts, infos = [], []
        for j, o in enumerate(obj_ids):
            mask = renders[o][1]["mask"][i]
            visib = mask & (front == j) & any_obj
            rgb = np.where(visib[..., None], renders[o][1]["rgb"][i], rgb)
            pose = renders[o][0][i]
            gts.append({"cam_R_m2c": pose[:3, :3].reshape(-1).tolist(),
                        "cam_t_m2c": (pose[:3, 3] * OBJECT_MM).tolist(), "obj_id": int(o)})
            n_all, n_vis = int(mask.sum()), int(visib.sum())
            infos.append({"bbox_obj": _bbox(mask), "bbox_visib": _bbox(visib), "px_count_all": n_all,
                          "px_count_valid": n_all, "px_count_visib": n_vis,
                          "visib_fract": float(n_vis / n_all) if n_all else 0.0})
            save_image(scene_dir / "mask" / f"{i:06d}_{j:06d}.png", (mask * 255).astype(np.uint8))
            save_image(scene_dir / "mask_visib" / f"{i:06d}_{j:06d}.png", (visib * 255).astype(np.uint8))
        depth_mm = np.where(any_obj, zmin * OBJECT_MM, 0.0)
        depth_png = np.clip(np.round(depth_mm / DEPTH_SCALE), 0, 65535).astype(np.uint16)
        (scene_dir / "depth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth_png).save(scene_dir / "depth" / f"{i:06d}.png")
        images.append(rgb.astype(np.uint8))
        K_bop = K.copy()
        K_bop[0, 2] -= 0.5   # BOP/OpenCV integer-pixel convention
        K_bop[1, 2] -= 0.5
        scene_gt[str(i)] = gts
        scene_camera[str(i)] = {"cam_K": K_bop.reshape(-1).tolist(), "depth_scale": DEPTH_SCALE}
        scene_info[str(i)] = infos
    for i, img in enumerate(camera_effects(np.stack(images), scene_id, jpeg_quality=90)):
        save_image(scene_dir / "rgb" / f"{i:06d}.png", img)
    for name, data in (("scene_gt", scene_gt), ("scene_camera", scene_camera), ("scene_gt_info", scene_info)):
        write_json(scene_dir / f"{name}.json", data, indent=None)


def generate(out: Path) -> dict:
    """Write ``<out>/ycbv/{test/<scene>/..., models/...}``; returns the generator facts for the marker."""
    root = Path(out) / "ycbv"
    meshes = {obj_id: load_object(spec) for obj_id, spec in OBJECTS.items()}
    _write_models(root, meshes)
    for scene_id, layout in SCENES.items():
        _write_scene(root / "test", scene_id, layout, meshes)
    write_attribution(OBJECTS.values(), out)
    return {"objects": {str(k): v for k, v in OBJECTS.items()}, "scenes": sorted(SCENES), "frames": FRAMES,
            "size": [WIDTH, HEIGHT]}

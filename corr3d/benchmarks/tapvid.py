"""Synthetic TAP-Vid DAVIS: videos of textured procedural objects rotating and sliding over a static background.

Ground-truth tracks are surface points projected into every frame; a point is occluded when it leaves the image or
the ray-cast surface at its pixel is another point (self-occlusion). Written as an official ``tapvid_davis.pkl``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from corr3d.benchmarks.common import background, composite, orbit_pose, render, visibility

VIDEOS = (  # (object spec, degrees of rotation per frame, horizontal slide per frame (object units), elevation)
    ("procedural:mug_cat", 7.0, 0.012, 20.0),
    ("procedural:box_chelsea", -6.0, -0.010, 30.0),
)
NUM_FRAMES = 16
HEIGHT, WIDTH = 120, 200
FOCAL = 210.0
DISTANCE = 2.2
POINTS_PER_SEED_FRAME = 12


def _motion(theta_deg: float, shift: float) -> np.ndarray:
    a = np.radians(theta_deg)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    m[0, 3] = shift
    return m


def make_video(spec: str, deg_per_frame: float, shift_per_frame: float, elevation: float, seed: int) -> dict:
    from corr3d.data.objects import load_object
    from corr3d.geometry import intrinsics

    mesh = load_object(spec)
    K = intrinsics(FOCAL, WIDTH, HEIGHT)
    cam = orbit_pose(25.0, elevation, DISTANCE)
    t0 = -(NUM_FRAMES - 1) / 2
    poses = np.stack([cam @ _motion(deg_per_frame * i, shift_per_frame * (i + t0)) for i in range(NUM_FRAMES)])
    views = render(mesh, K, poses, WIDTH, HEIGHT)
    bg = background(HEIGHT, WIDTH, seed)
    video = np.stack([composite(views["rgb"][i], views["mask"][i], bg) for i in range(NUM_FRAMES)])
    rng = np.random.default_rng(seed)
    seeds = []
    for f in (0, 5, 10, 15):  # points seen in the strided query frames
        xyz = views["xyz"][f][views["mask"][f]]
        if len(xyz):
            seeds.append(xyz[rng.choice(len(xyz), min(POINTS_PER_SEED_FRAME, len(xyz)), replace=False)])
    points3d = np.concatenate(seeds).astype(np.float64)
    tracks = np.zeros((len(points3d), NUM_FRAMES, 2))
    occluded = np.zeros((len(points3d), NUM_FRAMES), dtype=bool)
    for i in range(NUM_FRAMES):
        uv, vis = visibility(points3d, K, poses[i], views["xyz"][i], views["mask"][i])
        tracks[:, i] = uv
        occluded[:, i] = ~vis
    keep = (~occluded).sum(1) > 0
    return {"video": video, "points": (tracks[keep] / np.array([WIDTH, HEIGHT])).astype(np.float32),
            "occluded": occluded[keep]}


def generate(out: Path) -> dict:
    from corr3d.data.tapvid import write_tapvid_pickle

    videos = {}
    for i, (spec, deg, shift, elev) in enumerate(VIDEOS):
        videos[f"synth{i:02d}_{spec.split(':')[1]}"] = make_video(spec, deg, shift, elev, seed=100 + i)
    write_tapvid_pickle(Path(out) / "tapvid_davis.pkl", videos)
    return {"videos": len(videos), "frames": NUM_FRAMES, "size": [HEIGHT, WIDTH],
            "points": int(sum(len(v["points"]) for v in videos.values()))}

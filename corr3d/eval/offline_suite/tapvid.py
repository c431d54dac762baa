"""Synthetic TAP-Vid DAVIS: videos of held-out real textured objects turning, drifting and approaching over a static
background.

Motion is DAVIS-like and followable: a few degrees of rotation and a pixel or two of drift per frame (plus a slow
tilt), so that a strided query is at most ~50 degrees of rotation away from its farthest target frame. Frames carry
mild camera effects (exposure drift, noise, JPEG). The objects (v5) are SweetHome3D models of the held-out sh3d split
``test`` (classes seen in training, instances never; docs/real_objects.md): v4's procedural photo-textured shapes
could be matched by colour alone, so a random-init ViT tracked them as well as DINOv2. Ground-truth tracks are
surface points projected into every frame; a point is occluded when it leaves the image or the ray-cast surface at
its pixel is another point (self-occlusion). Written as an official ``tapvid_davis.pkl``; the CC-BY models are
credited in ``ATTRIBUTION.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from corr3d.assets.objects import load_object
from corr3d.assets.sh3d import write_attribution
from corr3d.eval.datasets.tapvid import write_tapvid_pickle
from corr3d.eval.offline_suite.common import (
    background,
    camera_effects,
    composite,
    held_out_objects,
    object_slug,
    orbit_pose,
    render,
    texture_photos,
    visibility,
)
from corr3d.geometry import intrinsics

# per video: (yaw degrees per frame, horizontal drift per frame (object units), camera elevation), v4's motions
MOTIONS = ((2.5, 0.008, 20.0), (-2.0, -0.008, 25.0), (2.0, 0.006, 30.0), (-2.5, 0.008, 20.0),
           (2.2, -0.006, 28.0), (-2.2, 0.007, 18.0), (2.8, 0.005, 32.0), (-1.8, -0.007, 22.0),
           (2.0, 0.008, 26.0), (-2.6, 0.006, 24.0), (-2.2, -0.008, 30.0), (2.4, -0.006, 27.0),
           (-2.4, 0.007, 21.0), (2.6, -0.006, 29.0), (-2.0, 0.008, 23.0), (2.2, 0.006, 31.0),
           (-2.6, -0.005, 19.0), (1.9, 0.007, 27.0))
# (object spec, *motion): 18 videos (v4: the CI half-width of delta_avg was 3.3 with 12; the video is the unit of the
# tracking CI), one per object of 18 evenly spaced over the held-out split file (common.held_out_objects)
VIDEOS = tuple((spec, *motion) for spec, motion in zip(held_out_objects("test", len(MOTIONS)), MOTIONS))
NUM_FRAMES = 24
HEIGHT, WIDTH = 144, 256
FOCAL = 250.0
DISTANCE = 2.2
TILT_DEG = 6.0              # slow pitch oscillation amplitude (degrees) over the video
ZOOM = 0.12                 # the object approaches / recedes: camera distance x (1 +- 12 %) over the video
POINTS_PER_SEED_FRAME = 16
SEED_FRAMES = (0, 5, 10, 15, 20)   # points seen in the strided query frames
GAIN_AMPLITUDE = 0.08       # camera auto-exposure drift: per-frame gain 1 +- 8 % (slow sinusoid)


def _motion(theta_deg: float, tilt_deg: float, shift: float) -> np.ndarray:
    a, b = np.radians(theta_deg), np.radians(tilt_deg)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = pitch @ yaw
    m[0, 3] = shift
    return m


def make_video(spec: str, deg_per_frame: float, shift_per_frame: float, elevation: float, seed: int) -> dict:
    mesh = load_object(spec)
    K = intrinsics(FOCAL, WIDTH, HEIGHT)
    cam = orbit_pose(25.0 + 40.0 * seed % 360, elevation, DISTANCE)
    t0 = -(NUM_FRAMES - 1) / 2
    poses = np.stack([cam @ _motion(deg_per_frame * (i + t0), TILT_DEG * np.sin(np.pi * i / (NUM_FRAMES - 1)),
                                    shift_per_frame * (i + t0)) for i in range(NUM_FRAMES)])
    poses[:, 2, 3] += DISTANCE * ZOOM * np.cos(np.pi * np.arange(NUM_FRAMES) / (NUM_FRAMES - 1))
    views = render(mesh, K, poses, WIDTH, HEIGHT)
    bg = background(HEIGHT, WIDTH, seed, exclude=texture_photos(spec))
    frames = np.stack([composite(views["rgb"][i], views["mask"][i], bg) for i in range(NUM_FRAMES)])
    phase = np.random.default_rng(seed + 7).uniform(0, 2 * np.pi)
    gains = 1.0 + GAIN_AMPLITUDE * np.sin(phase + 2 * np.pi * np.arange(NUM_FRAMES) / NUM_FRAMES)
    video = camera_effects(frames, seed, gains=gains)
    rng = np.random.default_rng(seed)
    seeds = []
    for f in SEED_FRAMES:
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
    videos = {}
    for i, (spec, deg, shift, elev) in enumerate(VIDEOS):
        videos[f"synth{i:02d}_{object_slug(spec)}"] = make_video(spec, deg, shift, elev, seed=100 + i)
    write_tapvid_pickle(Path(out) / "tapvid_davis.pkl", videos)
    specs = [spec for spec, *_ in VIDEOS]
    write_attribution(specs, out)
    return {"videos": len(videos), "specs": specs, "frames": NUM_FRAMES, "size": [HEIGHT, WIDTH],
            "points": int(sum(len(v["points"]) for v in videos.values()))}

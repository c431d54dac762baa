"""On-disk renders: format round trip, BlenderProc layout, determinism, resumable/atomic batches, bad meshes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corr3d.assets.objects import load_object
from corr3d.geometry import camera_center
from corr3d.render import ensure_rendered, render_object, render_views
from corr3d.render.batch import read_manifest, render_batch, render_rig
from corr3d.render.store import RenderedObject, detect_pose_convention, write_blenderproc_layout
from tests.helpers.config import config_section

REPO = Path(__file__).resolve().parents[2]
SMALL_RENDER = {"width": 64, "height": 64, "focal": 70.0, "icosphere_subdivisions": 0, "workers": 1}
SMALL = config_section("data.render", **SMALL_RENDER)


def test_render_rig_from_config_section():
    render = config_section("data.render", width=128, height=96, focal=140.0, distance=2.5, icosphere_subdivisions=0)
    cams, lighting = render_rig(render)
    assert cams.num_views == 12 and len(cams) == 12
    np.testing.assert_allclose(cams.K, [[140, 0, 64], [0, 140, 48], [0, 0, 1]])
    np.testing.assert_allclose(np.linalg.norm(camera_center(cams.poses), axis=1), 2.5)
    assert lighting.follow_camera and lighting.mode == "lambert"
    np.testing.assert_allclose(lighting.positions, [light[:3] for light in render.lights])


def test_render_object_round_trip(tmp_path):
    out = render_object("procedural:torus_checker", tmp_path / "torus", SMALL)
    obj = RenderedObject.open(out)
    assert obj.num_views == 12 and obj.width == 64 and obj.height == 64 and obj.layout == "corr3d"
    assert obj.object_id == "torus" and obj.spec == "procedural:torus_checker"
    assert obj.normalization["scale"] > 0 and len(obj.normalization["center"]) == 3
    cams, _ = render_rig(SMALL)
    np.testing.assert_allclose(obj.K, cams.K)
    np.testing.assert_allclose(obj.poses, cams.poses)
    direct = render_views(load_object("procedural:torus_checker"), cams.K, cams.poses, 64, 64)
    for i in (0, 5, 11):
        np.testing.assert_array_equal(obj.rgb(i), direct["rgb"][i])
        np.testing.assert_array_equal(obj.mask(i), direct["mask"][i])
        np.testing.assert_array_equal(obj.depth(i), direct["depth"][i])  # bit-exact float32
        np.testing.assert_allclose(obj.xyz(i), direct["xyz"][i], atol=5e-6)  # unprojected from exact depth
        view = obj.view(i)
        assert view["rgb"].dtype == np.uint8 and view["xyz"].dtype == np.float32
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("convention", ["opencv", "blender", "opencv_c2w", "blender_c2w"])
def test_blenderproc_layout_round_trip(tmp_path, convention):
    obj = RenderedObject.open(render_object("procedural:blob_noise", tmp_path / "blob", SMALL))
    bp_dir = write_blenderproc_layout(obj, tmp_path / "bp" / "obj0", convention=convention)
    assert (bp_dir / "color_000000.png").exists() and (bp_dir / "depth_000011.png").exists()
    assert detect_pose_convention(np.load(bp_dir / "obj_poses.npy")) == convention
    bp = RenderedObject.open(bp_dir)
    assert bp.layout == "blenderproc" and bp.num_views == 12 and bp.meta["pose_convention"] == convention
    np.testing.assert_allclose(bp.poses, obj.poses, atol=1e-12)
    np.testing.assert_allclose(bp.K, obj.K, atol=1e-12)  # K.npy written in BlenderProc's convention, read back
    for i in (0, 6):
        np.testing.assert_array_equal(bp.rgb(i), obj.rgb(i))
        np.testing.assert_array_equal(bp.mask(i), obj.mask(i))
        m = obj.mask(i)
        err = np.linalg.norm(bp.xyz(i)[m] - obj.xyz(i)[m], axis=1)
        assert err.max() < 1e-3  # 0.5 mm depth quantisation, stretched by the ray obliquity
    # the shared data/obj_poses.npy of the authors' repository lives one level up
    (bp_dir.parent / "obj_poses.npy").write_bytes((bp_dir / "obj_poses.npy").read_bytes())
    (bp_dir / "obj_poses.npy").unlink()
    assert RenderedObject.open(bp_dir).num_views == 12


def test_blenderproc_default_intrinsics_are_the_papers():
    from corr3d.render.store import PAPER_FOCAL, PAPER_SIZE

    assert (PAPER_FOCAL, PAPER_SIZE) == (560.0, 512)


def _authors_render(root: Path, n_views: int = 3):
    """A render in exactly the authors' layout and conventions (their data_utils/blenderproc.py): 512 px, their K
    (f 560, c 256 in BlenderProc's integer-pixel convention, i.e. the optical axis at 256.5 in corr3d's), black
    background, ``color_%06d.png``, ``mask_%06d.png`` (0/255), ``depth_%06d.png`` (uint16 mm, 0 = background),
    one shared ``obj_poses.npy`` (object->camera, OpenCV: their world frame is the camera frame) ABOVE the
    per-object folders. Returns (object dir, ground truth renders)."""
    from PIL import Image

    from corr3d.geometry import intrinsics, look_at_pose

    mesh = load_object("procedural:blob_noise")
    K_true = intrinsics(560.0, 512, 512, cx=256.5, cy=256.5)      # where BlenderProc's optical axis really is
    poses = np.stack([look_at_pose(2.0 * np.array(d) / np.linalg.norm(d))
                      for d in ([0.3, 0.4, 1.0], [1.0, 0.2, 0.4], [-0.5, 0.8, 0.6])][:n_views])
    truth = render_views(mesh, K_true, poses, 512, 512)
    obj_dir = root / "renders" / "000-000" / "someuid"
    obj_dir.mkdir(parents=True)
    for i in range(n_views):
        Image.fromarray(truth["rgb"][i]).save(obj_dir / f"color_{i:06d}.png")
        Image.fromarray((truth["mask"][i] * 255).astype(np.uint8)).save(obj_dir / f"mask_{i:06d}.png")
        mm = np.round(truth["depth"][i].astype(np.float64) * 1000.0).astype(np.uint16)
        Image.fromarray(np.where(truth["mask"][i], mm, 0).astype(np.uint16)).save(obj_dir / f"depth_{i:06d}.png")
    np.save(obj_dir.parent / "obj_poses.npy", poses)   # data/obj_poses.npy: one level above the object folders
    return obj_dir, truth, poses


def test_blenderproc_authors_layout_reprojects_exactly(tmp_path):
    from corr3d.geometry import depth_to_xyz, project

    obj_dir, truth, poses = _authors_render(tmp_path)
    bp = RenderedObject.open(obj_dir)
    assert bp.meta["pose_convention"] == "opencv" and bp.num_views == 3
    np.testing.assert_allclose(bp.K, [[560, 0, 256.5], [0, 560, 256.5], [0, 0, 1]])
    np.testing.assert_allclose(bp.poses, poses, atol=1e-12)
    for i in range(3):
        m = truth["mask"][i]
        np.testing.assert_array_equal(bp.mask(i), m & (truth["depth"][i] > 0))
        err = np.linalg.norm(bp.xyz(i)[m] - truth["xyz"][i][m], axis=1)
        assert err.mean() < 4e-4 and err.max() < 1.5e-3        # mm depth quantisation only
        # reprojection: true surface points land on their own pixel centres through the reader's K and pose
        rows, cols = np.nonzero(m)
        uv, _ = project(truth["xyz"][i][m].astype(np.float64), bp.K, bp.poses[i])
        np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], 1), atol=0.02)
        # the pre-fix reading (principal point at 256: BlenderProc's number taken as a continuous coordinate)
        wrong = depth_to_xyz(bp.depth(i), np.array([[560, 0, 256.0], [0, 560, 256.0], [0, 0, 1]]), bp.poses[i])
        assert np.linalg.norm(wrong[m] - truth["xyz"][i][m], axis=1).mean() > 1.2e-3   # ~0.5 px * 2 / 560


def test_camera_fixed_lights_move_with_the_camera():
    """The authors' lights are fixed to the camera: a sphere's shading pattern is the same from every viewpoint
    (camera-fixed), whereas object-fixed lights light some views from behind."""
    from corr3d.geometry import intrinsics, look_at_pose
    from corr3d.render.raycast import OBJECT_LIGHTS, Lighting

    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)   # plain albedo: brightness = shading only
    K = intrinsics(70.0, 64, 64)
    poses = np.stack([look_at_pose(2.0 * np.array(d) / np.linalg.norm(d)) for d in ([0, 0, 1.0], [0, 0, -1.0],
                                                                                     [1.0, 0.5, 0])])
    cam = render_views(mesh, K, poses, 64, 64, lighting=Lighting())
    obj = render_views(mesh, K, poses, 64, 64, lighting=Lighting(lights=OBJECT_LIGHTS, follow_camera=False))
    m = cam["mask"][0]
    assert (cam["mask"] == m).all()
    cam_rgb = cam["rgb"].astype(float)
    assert np.abs(cam_rgb[1][m] - cam_rgb[0][m]).mean() < 3 and np.abs(cam_rgb[2][m] - cam_rgb[0][m]).mean() < 3
    obj_rgb = obj["rgb"].astype(float)
    assert np.abs(obj_rgb[1][m].mean() - obj_rgb[0][m].mean()) > 10
    # the key light (1, -1, 1) is to the upper right of the camera: the upper-right quadrant is brighter
    gray = cam_rgb[0].mean(-1)
    assert gray[16:32, 32:48][m[16:32, 32:48]].mean() > gray[32:48, 16:32][m[32:48, 16:32]].mean() + 10


def test_rendering_is_deterministic_by_seed(tmp_path):
    a = RenderedObject.open(render_object("procedural:blob_voronoi:5", tmp_path / "a", SMALL))
    b = RenderedObject.open(render_object("procedural:blob_voronoi:5", tmp_path / "b", SMALL))
    c = RenderedObject.open(render_object("procedural:blob_voronoi:6", tmp_path / "c", SMALL))
    for i in (0, 3):
        np.testing.assert_array_equal(a.rgb(i), b.rgb(i))
        np.testing.assert_array_equal(a.depth(i), b.depth(i))
    assert not np.array_equal(a.rgb(0), c.rgb(0))


def test_ensure_rendered_skips_finished_and_rerenders_stale(tmp_path):
    specs = ["procedural:cone_voronoi", "procedural:box_stripes"]
    dirs = ensure_rendered(specs, tmp_path, SMALL)
    assert [d.name for d in dirs] == ["procedural_cone_voronoi", "procedural_box_stripes"]
    stamp = (dirs[0] / "meta.json").stat().st_mtime_ns
    assert ensure_rendered(specs, tmp_path, SMALL) == dirs
    assert (dirs[0] / "meta.json").stat().st_mtime_ns == stamp  # not re-rendered
    bigger = config_section("data.render", **dict(SMALL_RENDER, width=80, height=80))
    ensure_rendered(specs[:1], tmp_path, bigger)  # other settings: re-rendered in place
    assert RenderedObject.open(dirs[0]).width == 80
    manifest = read_manifest(tmp_path)
    assert manifest["procedural:box_stripes"]["status"] == "done"


def test_corrupt_glb_is_reported_and_skipped(tmp_path):
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF\x02\x00\x00\x00" + os.urandom(64))
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    specs = [str(bad), "procedural:star_prism", str(empty), "objaverse:not_in_cache"]
    entries = render_batch(specs, tmp_path / "out", SMALL, workers=1, progress=False)
    assert entries["procedural:star_prism"]["status"] == "done"
    for spec in (str(bad), str(empty), "objaverse:not_in_cache"):
        assert entries[spec]["status"] == "failed" and entries[spec]["error"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())["objects"]
    assert on_disk[str(bad)]["status"] == "failed" and "MeshLoadError" in on_disk[str(bad)]["error"]
    dirs = ensure_rendered(specs, tmp_path / "out", SMALL)
    assert [d.name for d in dirs] == ["procedural_star_prism"]
    with pytest.raises(RuntimeError):
        ensure_rendered([str(bad)], tmp_path / "out", SMALL)


def _all_files_readable(obj_dir: Path) -> None:
    obj = RenderedObject.open(obj_dir)
    for i in range(obj.num_views):
        assert obj.rgb(i).shape == (obj.height, obj.width, 3)
        assert obj.mask(i).any()
        assert obj.depth(i).shape == (obj.height, obj.width)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_batch_resumes_without_corrupt_files(tmp_path):
    """SIGKILL the CLI (and its worker processes) mid-batch; a re-run completes every object, nothing corrupt."""
    names = ["sphere_checker", "torus_checker", "cone_voronoi", "box_stripes", "capsule_stripes", "star_prism",
             "pawn_noise", "blob_noise", "helix_stripes", "arch_gravel", "table", "snowman"]
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "data_prep" / "render_objects.py"), *[f"procedural:{n}" for n in names],
           "--out", str(out), "--workers", "2", "--quiet", "--set", "width=96", "height=96", "focal=105.0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = sum(e["status"] == "done" for e in read_manifest(out).values())
        if done >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "batch finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its spawned workers (same session)
    proc.wait()
    finished = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert 2 <= len(finished) < len(names)
    for d in finished:  # whatever is published is complete
        _all_files_readable(d)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(out)
    assert all(manifest[f"procedural:{n}"]["status"] == "done" for n in names)
    assert not list(out.glob(".tmp-*"))
    for n in names:
        _all_files_readable(out / f"procedural_{n}")


def test_render_experiment_objects_from_config(tmp_path):
    """What ``corr3d render EXP`` runs: train (first num_train_objects) + val + equivariance objects."""
    from corr3d.config import load_config
    from corr3d.render.batch import render_experiment_objects

    cfg = load_config("base", [f"data.rendered_dir={tmp_path}",
                               "data.train_objects=[procedural:hemisphere,procedural:torus_checker]",
                               "data.num_train_objects=1", "data.val_objects=[procedural:cone_voronoi]",
                               "equivariance.objects=[procedural:gear_astronaut]", "data.render.width=32",
                               "data.render.height=32", "data.render.focal=35.0",
                               "data.render.icosphere_subdivisions=0", "data.render.workers=1"])
    entries = render_experiment_objects(cfg, progress=False)
    assert sorted(entries) == ["procedural:cone_voronoi", "procedural:gear_astronaut", "procedural:hemisphere"]
    assert all(e["status"] == "done" for e in entries.values())
    assert RenderedObject.open(tmp_path / "procedural_hemisphere").width == 32

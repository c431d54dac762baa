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
from corr3d.geometry import IcosphereCameras
from corr3d.render import ensure_rendered, render_object, render_views
from corr3d.render.batch import read_manifest, render_batch, render_settings
from corr3d.render.store import RenderedObject, detect_pose_convention, write_blenderproc_layout

REPO = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "focal": 70.0, "icosphere_subdivisions": 0, "workers": 1}


def test_render_object_round_trip(tmp_path):
    out = render_object("procedural:torus_checker", tmp_path / "torus", SMALL)
    obj = RenderedObject.open(out)
    assert obj.num_views == 12 and obj.width == 64 and obj.height == 64 and obj.layout == "corr3d"
    assert obj.object_id == "torus" and obj.spec == "procedural:torus_checker"
    assert obj.normalization["scale"] > 0 and len(obj.normalization["center"]) == 3
    cams = IcosphereCameras.from_config(render_settings(SMALL))
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
    bp.K = obj.K  # test images are not 512-px paper renders: the default K only holds for the paper's FOV
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
    bigger = dict(SMALL, width=80, height=80)
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

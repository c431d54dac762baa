"""Render reliability probes (issue 14): roots, truncated images, other hosts' temps, orphaned workers, NaN depth."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corr3d.errors import DataFileError
from corr3d.render.batch import (
    _host_tag,
    _write_manifest,
    is_complete,
    read_manifest,
    render_batch,
    render_settings,
)
from corr3d.render.store import RenderedObject

REPO = Path(__file__).resolve().parents[2]
SMALL = {"width": 48, "height": 48, "focal": 52.0, "icosphere_subdivisions": 0, "workers": 1}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_escaping_uid_renders_nothing_outside_the_root(tmp_path):
    """objaverse:../../victim/important used to render outside data/rendered and replace the victim directory."""
    root = tmp_path / "data" / "rendered"
    victim = tmp_path / "victim" / "important"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    specs = ["objaverse:../../victim/important", "procedural:../../../x", "procedural:cone_voronoi"]
    entries = render_batch(specs, root, SMALL, workers=1, progress=False)
    assert entries["procedural:cone_voronoi"]["status"] == "done"
    for spec in specs[:2]:
        assert entries[spec]["status"] == "failed" and "invalid spec" in entries[spec]["error"]
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "victim"]  # nothing created next to data/


def test_symlinked_object_dir_pointing_outside_is_not_replaced(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    (root / "procedural_cone_voronoi").symlink_to(outside)
    entries = render_batch(["procedural:cone_voronoi"], root, SMALL, workers=1, progress=False)
    assert entries["procedural:cone_voronoi"]["status"] == "failed"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_truncated_png_is_not_counted_complete_and_is_rerendered(tmp_path):
    settings = render_settings(SMALL)
    render_batch(["procedural:box_stripes"], tmp_path, SMALL, workers=1, progress=False)
    obj_dir = tmp_path / "procedural_box_stripes"
    meta = json.loads((obj_dir / "meta.json").read_text())
    assert set(meta["files"]) >= {"rgb_000.png", "mask_000.png", "depth.npz"}
    assert is_complete(obj_dir, settings)
    png = obj_dir / "rgb_003.png"
    png.write_bytes(png.read_bytes()[:200])  # a truncated copy (disk full, interrupted rsync)
    assert not is_complete(obj_dir, settings)
    render_batch(["procedural:box_stripes"], tmp_path, SMALL, workers=1, progress=False)
    assert is_complete(obj_dir, settings, verify="decode")
    obj = RenderedObject.open(obj_dir)
    assert all(obj.rgb(i).shape == (48, 48, 3) for i in range(obj.num_views))


def test_same_size_corruption_is_caught_by_decode_verification(tmp_path):
    settings = render_settings(SMALL)
    render_batch(["procedural:box_stripes"], tmp_path, SMALL, workers=1, progress=False)
    png = tmp_path / "procedural_box_stripes" / "mask_002.png"
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF
    png.write_bytes(bytes(data))
    assert is_complete(tmp_path / "procedural_box_stripes", settings)  # the cheap size check cannot see it
    assert not is_complete(tmp_path / "procedural_box_stripes", settings, verify="decode")


def test_other_hosts_temp_dirs_survive_cleanup(tmp_path):
    """Shared filesystem: a pid from another host means nothing here, so that host's live temp dir must stay."""
    dead = _dead_pid()
    mine_dead = tmp_path / f".tmp-procedural_x@{_host_tag()}@{dead}@abc123"
    mine_live = tmp_path / f".tmp-procedural_y@{_host_tag()}@{os.getpid()}@abc123"
    foreign = tmp_path / f".tmp-procedural_z@other-node-07@{dead}@abc123"
    foreign_old = tmp_path / f".tmp-procedural_w@other-node-07@{dead}@def456"
    for d in (mine_dead, mine_live, foreign, foreign_old):
        d.mkdir()
        (d / "rgb_000.png").write_bytes(b"partial")
    os.utime(foreign_old, (time.time() - 3 * 24 * 3600,) * 2)
    render_batch(["procedural:cone_voronoi"], tmp_path, SMALL, workers=1, progress=False)
    assert not mine_dead.exists() and not foreign_old.exists()
    assert mine_live.exists() and foreign.exists() and (foreign / "rgb_000.png").exists()


def test_manifest_writes_merge_with_other_processes(tmp_path):
    _write_manifest(tmp_path, {"a": {"spec": "a", "status": "done"}})
    _write_manifest(tmp_path, {"b": {"spec": "b", "status": "failed"}})  # another batch's view of the manifest
    assert set(read_manifest(tmp_path)) == {"a", "b"}


def test_nan_depth_is_refused_with_the_file_named(tmp_path):
    render_batch(["procedural:cone_voronoi"], tmp_path, SMALL, workers=1, progress=False)
    obj_dir = tmp_path / "procedural_cone_voronoi"
    with np.load(obj_dir / "depth.npz") as arrays:
        depths = {k: arrays[k] for k in arrays.files}
    depths["view_001"] = np.where(depths["view_001"] > 0, np.nan, 0).astype(np.float32)
    np.savez_compressed(obj_dir / "depth.npz", **depths)
    obj = RenderedObject.open(obj_dir)
    obj.depth(0)
    with pytest.raises(DataFileError, match="depth.npz.*non-finite"):
        obj.depth(1)
    meta = json.loads((obj_dir / "meta.json").read_text())
    meta["poses"][0][0][3] = float("nan")
    (obj_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataFileError, match="non-finite.*poses"):
        RenderedObject.open(obj_dir)


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(240)
def test_render_workers_die_with_a_sigkilled_parent(tmp_path):
    names = ["sphere_checker", "torus_checker", "cone_voronoi", "box_stripes", "capsule_stripes", "star_prism"]
    cmd = [sys.executable, str(REPO / "data_prep" / "render_objects.py"), *[f"procedural:{n}" for n in names],
           "--out", str(tmp_path / "out"), "--workers", "2", "--quiet", "--set", "width=256", "height=256",
           "focal=280.0", "icosphere_subdivisions=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # spawn workers show up as children running multiprocessing's spawn main
        workers = {c for c in _children(proc.pid)
                   if b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()} if Path(f"/proc/{proc.pid}").exists() else set()
        if len(workers) >= 2 and list((tmp_path / "out").glob(".tmp-*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(workers) >= 2, "workers never started"
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: the workers are not signalled by anyone
    proc.wait()
    deadline = time.time() + 20
    alive = set(workers)
    while alive and time.time() < deadline:
        alive = {w for w in alive if Path(f"/proc/{w}").exists()
                 and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"}
        time.sleep(0.2)
    for w in alive:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not alive, f"orphaned render workers {alive}"

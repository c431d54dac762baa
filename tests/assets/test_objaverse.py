"""The Objaverse pipeline against a local objaverse cache (gz JSON index/metadata/LVIS + trimesh-written GLBs)."""
from __future__ import annotations

import gzip
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import objaverse
import pytest
import trimesh

from corr3d.assets import objaverse as ov

UIDS = [f"{i:032x}" for i in range(1, 7)]  # objaverse uids are 32 hex characters
SHARD = {uid: f"000-{i % 2:03d}" for i, uid in enumerate(UIDS)}


def _write_gz_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        json.dump(data, fh)


def _write_glb(path: Path, seed: int) -> None:
    mesh = trimesh.creation.box(extents=(1.0, 0.5 + 0.1 * seed, 0.25))
    mesh.visual.vertex_colors = np.random.default_rng(seed).integers(0, 255, (len(mesh.vertices), 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)


def _object_path(uid: str) -> str:
    return f"glbs/{SHARD[uid]}/{uid}.glb"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A versioned cache holding the index, metadata, LVIS annotations and GLBs of the first four uids only; the
    remaining two live on a fake 'server' folder that the patched urlretrieve copies from (no network)."""
    root = tmp_path / "hf-objaverse-v1"
    server = tmp_path / "server"
    _write_gz_json(root / "object-paths.json.gz", {uid: _object_path(uid) for uid in UIDS})
    for shard in sorted(set(SHARD.values())):
        _write_gz_json(root / "metadata" / f"{shard}.json.gz",
                       {uid: {"name": f"object {uid[-1]}", "license": "by", "uri": f"https://x/{uid}"}
                        for uid in UIDS if SHARD[uid] == shard})
    _write_gz_json(root / "lvis-annotations.json.gz", {"mug": UIDS[:2], "chair": UIDS[2:5]})
    for i, uid in enumerate(UIDS):
        _write_glb((root if i < 4 else server) / _object_path(uid), seed=i)

    fetched = tmp_path / "fetched.log"

    def fake_urlretrieve(url, filename):
        relative = url.split("/resolve/main/", 1)[1]
        source = server / relative
        if not source.exists():
            raise OSError(f"offline test: {url} not on the fake server")
        with open(fetched, "a") as fh:
            fh.write(relative + "\n")
        shutil.copy(source, filename)
        return filename, None

    monkeypatch.setattr(urllib.request, "urlretrieve", fake_urlretrieve)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", str(root))
    monkeypatch.setattr(objaverse, "BASE_PATH", str(tmp_path))
    return {"root": root, "fetched": fetched}


def _fetched(cache) -> list[str]:
    return cache["fetched"].read_text().split() if cache["fetched"].exists() else []


def test_parse_uid_forms():
    uid = UIDS[0]
    for entry in (uid, f"{uid}.glb", f"000-123/{uid}", f"objaverse:{uid}", f"objaverse:{uid}\t/x/{uid}.glb"):
        assert ov.parse_uid(entry) == uid


def test_select_uids_from_file_lvis_and_count(cache, tmp_path):
    listing = tmp_path / "uids.txt"
    listing.write_text(f"# the authors' format\n000-000/{UIDS[3]}\n{UIDS[1]}.glb\n\n{UIDS[3]}\n")
    assert ov.select_uids(uid_file=listing) == [UIDS[3], UIDS[1]]
    assert ov.select_uids(uid_file=listing, count=1) == [UIDS[3]]
    assert ov.select_uids(lvis_categories=["mug", "chair"]) == UIDS[:5]
    with pytest.raises(KeyError, match="unknown LVIS"):
        ov.select_uids(lvis_categories=["spaceship"])
    subset = ov.select_uids(count=3, seed=7)
    assert len(subset) == 3 and set(subset) <= set(UIDS)
    assert subset == ov.select_uids(count=3, seed=7)  # seeded
    assert ov.select_uids() == UIDS


def test_cached_objects_need_no_download(cache):
    paths = ov.download_objects(UIDS[:4], processes=2)
    assert list(paths) == UIDS[:4]
    assert _fetched(cache) == []
    for uid, path in paths.items():
        assert path == cache["root"] / _object_path(uid) and path.exists()
        assert ov.cached_object_path(uid) == path
    with pytest.raises(FileNotFoundError):
        ov.cached_object_path(UIDS[5])


def test_parallel_download_fetches_only_missing(cache):
    paths = ov.download_objects(UIDS, processes=2)  # multiprocessing.Pool in objaverse, fork keeps the patches
    assert set(paths) == set(UIDS)
    assert sorted(_fetched(cache)) == sorted(_object_path(u) for u in UIDS[4:])
    for path in paths.values():
        mesh = trimesh.load(path, force="mesh")
        assert len(mesh.faces) == 12
    ov.download_objects(UIDS, processes=2)  # second run: everything cached now
    assert len(_fetched(cache)) == 2


def test_unknown_uids_are_skipped(cache):
    with pytest.warns(UserWarning, match="Could not find"):
        paths = ov.download_objects([UIDS[0], "f" * 32])
    assert list(paths) == [UIDS[0]]


def _load_data_prep(name: str):
    """A data_prep/ command script as a module (data_prep/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "data_prep" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _load_cli():
    return _load_data_prep("download_objaverse")


def test_cli_writes_spec_list_with_metadata(cache, tmp_path):
    out = tmp_path / "lists" / "mugs.txt"
    assert _load_cli().main(["--lvis", "mug", "chair", "--count", "3", "--seed", "1", "--processes", "2",
                             "--out", str(out)]) == 0
    specs = ov.read_object_list(out)
    assert len(specs) == 3 and all(s.startswith("objaverse:") for s in specs)
    for line in out.read_text().splitlines():
        spec_str, path = line.split("\t")
        assert Path(path).exists() and ov.parse_uid(spec_str) in Path(path).name
    meta = json.loads(out.with_name("mugs.txt.meta.json").read_text())
    assert set(meta) == {ov.parse_uid(s) for s in specs}
    assert all(m["name"].startswith("object") and m["license"] == "by" for m in meta.values())


def test_cli_cache_dir_flag_redirects_the_package(cache, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "hf-objaverse-v1"
    shutil.copytree(cache["root"], moved)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", "/nonexistent/hf-objaverse-v1")
    out = tmp_path / "list.txt"
    assert _load_cli().main(["--count", "2", "--cache-dir", str(moved), "--out", str(out), "--no-metadata"]) == 0
    paths = [Path(line.split("\t")[1]) for line in out.read_text().splitlines()]
    assert len(paths) == 2 and all(moved in p.parents for p in paths)
    assert not out.with_name("list.txt.meta.json").exists()


def _load_heldout_cli():
    return _load_data_prep("make_heldout_list")


def test_heldout_list_is_disjoint_from_the_authors_training_list(cache, tmp_path):
    train = tmp_path / "10k.txt"   # the authors' data/10k.txt format
    train.write_text("".join(f"000-{i:03d}/{uid}\n" for i, uid in enumerate(UIDS[:3])))
    out = tmp_path / "heldout.txt"
    assert _load_heldout_cli().main(["--uids-file", str(train), "--count", "2", "--seed", "0", "--out", str(out)]) == 0
    specs = ov.read_object_list(out)
    assert len(specs) == 2 and not {ov.parse_uid(s) for s in specs} & set(UIDS[:3])
    first = out.read_text()
    assert _load_heldout_cli().main(["--uids-file", str(train), "--count", "2", "--seed", "0", "--out", str(out)]) == 0
    assert out.read_text() == first                                   # seeded: reproducible
    assert _load_heldout_cli().main(["--uids-file", str(train), "--count", "9", "--out", str(out)]) == 0
    assert {ov.parse_uid(s) for s in ov.read_object_list(out)} == set(UIDS[3:])   # all that remain
    ov.check_disjoint(ov.read_uid_file(train), ov.read_object_list(out))


def test_download_cli_exclude(cache, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text(f"objaverse:{UIDS[0]}\n000-000/{UIDS[1]}\n")
    out = tmp_path / "list.txt"
    assert _load_cli().main(["--count", "3", "--exclude", str(train), "--out", str(out), "--no-metadata"]) == 0
    assert not {ov.parse_uid(s) for s in ov.read_object_list(out)} & set(UIDS[:2])


def test_overlapping_lists_are_refused_naming_uids(tmp_path):
    with pytest.raises(ValueError, match=f"objaverse:{UIDS[1]}"):
        ov.check_disjoint([f"000-001/{UIDS[1]}", "procedural:hemisphere"], [f"objaverse:{UIDS[1]}\t/x.glb"])
    ov.check_disjoint(["procedural:hemisphere", f"objaverse:{UIDS[0]}"], ["procedural:mug_cat", UIDS[2]])
    from corr3d.config import load_config

    heldout = tmp_path / "eval.txt"
    heldout.write_text(f"objaverse:{UIDS[4]}\nobjaverse:{UIDS[2]}\n")
    cfg = load_config("base", [f"data.train_objects=[objaverse:{UIDS[2]},procedural:hemisphere]",
                               f"equivariance.object_list={heldout}"])
    with pytest.raises(ValueError, match="overlap"):
        ov.check_experiment_disjoint(cfg)
    cfg = load_config("base", [f"equivariance.object_list={heldout}"])
    ov.check_experiment_disjoint(cfg)


def test_missing_list_files_are_left_to_the_stage_that_reads_them(tmp_path):
    from corr3d.config import load_config

    ov.check_experiment_disjoint(load_config("base", [f"data.object_list={tmp_path / 'missing.txt'}"]))


def test_the_authors_10k_list_ships_and_parses():
    """data_prep/authors_10k.txt: the authors' data/10k.txt (issue 22 item 3), 10,000 distinct uids."""
    from corr3d.assets.objaverse import read_uid_file
    from corr3d.config import REPO_ROOT

    path = REPO_ROOT / "data_prep" / "authors_10k.txt"
    uids = read_uid_file(path)
    assert len(uids) == 10_000 == len(set(uids))
    assert uids[0] == "152e08c384e744048e183dd6466aa841"   # their first line: 000-093/152e08c384e744048e183dd6466aa841
    assert "06a94d9" in path.read_text().splitlines()[0]

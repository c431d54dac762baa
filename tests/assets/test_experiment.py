import pytest

from corr3d.assets.experiment import experiment_objects, listed_specs, split_objects
from corr3d.config import load_config
from corr3d.launch import slurm


def _listing(tmp_path, name, specs):
    path = tmp_path / name
    path.write_text("# comment\n" + "".join(f"{s}\t/x/{s}.glb\n" for s in specs))
    return path


def test_lists_are_read_for_training_and_evaluation(tmp_path):
    train_list = _listing(tmp_path, "train.txt", ["objaverse:u1", "objaverse:u2", "objaverse:u3"])
    eval_list = _listing(tmp_path, "eval.txt", ["objaverse:e1", "procedural:torus_coffee"])
    cfg = load_config("base", ["data.train_objects=[procedural:hemisphere]", f"data.object_list={train_list}",
                               "data.num_train_objects=3", "data.val_objects=[procedural:cube_twisted]",
                               "equivariance.objects=[procedural:torus_coffee]",
                               f"equivariance.object_list={eval_list}"])
    objs = experiment_objects(cfg)
    assert objs.train == ["procedural:hemisphere", "objaverse:u1", "objaverse:u2"]
    assert objs.val == ["procedural:cube_twisted"]
    assert objs.eval == ["procedural:torus_coffee", "objaverse:e1"]
    assert objs.all() == [*objs.train, *objs.val, *objs.eval]
    assert slurm.experiment_object_specs(cfg) == objs.all()


def test_held_out_fraction_matches_the_datamodule_split(tmp_path):
    items = [f"procedural:o{k}" for k in range(10)]
    cfg = load_config("base", [f"data.train_objects=[{','.join(items)}]", "data.val_fraction=0.2",
                               "data.num_train_objects=5", "seed=3"])
    objs = experiment_objects(cfg)
    assert (objs.train, objs.val) == split_objects(items, [], 0.2, 5, seed=3)
    assert len(objs.val) == 2 and not set(objs.val) & set(objs.train) and len(objs.train) == 5


def test_render_command_renders_the_listed_objects(tmp_path, monkeypatch):
    """``corr3d render`` used to skip data.object_list; it now renders exactly experiment_objects(cfg).all()."""
    from corr3d.render import batch

    train_list = _listing(tmp_path, "train.txt", ["procedural:cube_twisted"])
    cfg = load_config("base", [f"data.object_list={train_list}", f"data_root={tmp_path}"])
    seen = {}
    monkeypatch.setattr(batch, "render_batch", lambda specs, root, render_cfg, workers=None, progress=True:
                        seen.setdefault("specs", list(specs)) and {s: {"status": "done"} for s in specs})
    batch.render_experiment_objects(cfg, progress=False)
    assert seen["specs"] == experiment_objects(cfg).all() and "procedural:cube_twisted" in seen["specs"]


def test_other_data_kinds_have_no_objects_to_render():
    cfg = load_config("base", ["data.kind=mvimgnet"])
    objs = experiment_objects(cfg)
    assert objs.train == [] and objs.val == [] and objs.eval == listed_specs(cfg.equivariance.objects, None)


def test_no_training_objects_is_an_error():
    with pytest.raises(ValueError, match="no training objects"):
        experiment_objects(load_config("base", ["data.train_objects=[]"]))


# ----------------------------------------------------------------------------------------------- sh3d splits
def test_training_on_held_out_sh3d_objects_is_refused(tmp_path):
    """The committed sh3d val/test splits (data_prep/splits) are never trained on (no Debian package needed)."""
    from corr3d.assets import objaverse, sh3d
    from corr3d.assets.experiment import HeldOutObjectError, check_experiment_disjoint

    test_obj, val_obj = sh3d.load_split("test")[0], sh3d.load_split("val")[0]
    ok = load_config("base", ["data.train_objects=[]", f"data.object_list={sh3d.split_path('train')}",
                              f"data.val_objects=[{val_obj}]", "data.num_train_objects=4"])
    objs = experiment_objects(ok)
    assert objs.train == sh3d.load_split("train")[:4] and objs.val == [val_obj]
    check_experiment_disjoint(ok)
    for spec, split in ((test_obj, "test"), (val_obj, "val"), (sh3d.load_split("untextured")[0], "untextured"),
                        (sh3d.load_split("test_unseen_categories")[0], "test_unseen_categories")):
        bad = load_config("base", [f"data.train_objects=[procedural:hemisphere,{spec}]"])
        for check in (experiment_objects, check_experiment_disjoint, objaverse.check_experiment_disjoint):
            with pytest.raises(HeldOutObjectError, match=f"{spec} \\({split}\\)") as info:
                check(bad)
            assert "sh3d_train.txt" in info.value.fix
    listed = tmp_path / "train.txt"
    listed.write_text(f"{test_obj}\n")
    with pytest.raises(HeldOutObjectError):
        experiment_objects(load_config("base", [f"data.object_list={listed}"]))
    with pytest.raises(HeldOutObjectError, match="validation objects"):  # model selection on test objects
        experiment_objects(load_config("base", [f"data.val_objects=[{test_obj}]"]))


def test_sh3d_held_out_check_reads_the_given_splits(tmp_path):
    from corr3d.assets.experiment import HeldOutObjectError, check_sh3d_held_out

    (tmp_path / "sh3d_val.txt").write_text("# v\nsh3d:L/v\n")
    (tmp_path / "sh3d_test.txt").write_text("sh3d:L/t\tclass\n")
    check_sh3d_held_out(["sh3d:L/a", "procedural:hemisphere", "objaverse:v"], ["sh3d:L/v"], str(tmp_path))
    with pytest.raises(HeldOutObjectError, match=r"sh3d:L/v \(val\)"):
        check_sh3d_held_out(["sh3d:L/v"], [], str(tmp_path))
    with pytest.raises(HeldOutObjectError, match=r"sh3d:L/t \(test\)"):
        check_sh3d_held_out([], ["sh3d:L/t"], str(tmp_path))


def test_split_entries_expand_to_the_committed_splits():
    from corr3d.assets import sh3d
    from corr3d.assets.experiment import expand_split
    from corr3d.errors import Corr3dUserError

    test = sh3d.load_split("test")
    assert expand_split("sh3d_split:test") == test
    picked = expand_split("sh3d_split:test@8")
    assert len(set(picked)) == 8 and set(picked) <= set(test) and picked[0] == test[0]
    assert picked == [test[(i * len(test)) // 8] for i in range(8)]       # evenly spaced, deterministic
    assert expand_split("procedural:house") == ["procedural:house"]
    for bad in ("sh3d_split:test@0", "sh3d_split:test@x", f"sh3d_split:test@{len(test) + 1}"):
        with pytest.raises(Corr3dUserError):
            expand_split(bad)
    cfg = load_config("base", ["data.train_objects=[sh3d_split:test@2]"])
    with pytest.raises(Corr3dUserError, match="held-out"):
        experiment_objects(cfg)

"""Config range probes (issue 14): each bad value is a ConfigError that names the key, raised before any work."""
import pytest

from corr3d.config import ConfigError, load_config

PROBES = [
    ("model.lora.rank=-1", "model.lora.rank"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.target_res=0", "model.target_res"),
    ("seed=null", "seed"),
    ("data.pairs_per_epoch=0", "data.pairs_per_epoch"),
    # closed sets (issue 21): each names the key
    ("loss.name=smoothap", "loss.name"),
    ("trainer.precision=bf17", "trainer.precision"),
    ("trainer.precision=fp16", "trainer.precision"),
    ("equivariance.protocol=dense", "equivariance.protocol"),
    ("model.head.init=zeros", "model.head.init"),
    ("eval.models=[pretrained,finetune]", "eval.models"),
    ("eval.models=[pretrained,pretrained]", "eval.models"),
    ("eval.tasks=[posee]", "eval.tasks"),
    ("eval.tasks=[pose,pose]", "eval.tasks"),
    ("equivariance.reference_models=[finetuned]", "equivariance.reference_models"),
    ("data.kind=co3d", "data.kind"),
    ("data.render.shading=phong", "data.render.shading"),
    ("launcher.name=lsf", "launcher.name"),
    ("eval.tracking.query_mode=last", "eval.tracking.query_mode"),
    ("eval.pose.unit=inch", "eval.pose.unit"),
    ("eval.semantic.pfpascal_views=[other]", "eval.semantic.pfpascal_views"),
    # bounds and relations
    ("data.render.png_compression=10", "data.render.png_compression"),
    ("data.render.png_compression=-1", "data.render.png_compression"),
    ("model.head.num_layers=9", "model.head.num_layers"),
    ("data.pairs.true_fraction=1.5", "data.pairs.true_fraction"),
    ("data.augment.color_p=2", "data.augment.color_p"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("loss.pos_radius=0.1", "loss.pos_radius"),
    ("loss.neg_radius=0.001", "loss.pos_radius"),
    ("data.render.up=[0,0,0]", "data.render.up"),
    ("data.render.background=[0,0]", "data.render.background"),
    ("data.pairs.max_rotation_deg=10", "data.pairs.max_rotation_deg"),
    ("equivariance.max_rotation_deg=10", "equivariance.max_rotation_deg"),
    # names and devices
    ("model.backbone=../../etc/passwd", "model.backbone"),
    ("model.backbone=not_a_model", "model.backbone"),
    ("eval.backbone=dinov2/s14", "eval.backbone"),
    ("eval.device=gpu", "eval.device"),
]


@pytest.mark.parametrize("override,key", PROBES)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config("base", [override])
    assert f"'{key}'" in str(info.value)
    assert info.value.fix and info.value.violations and info.value.violations[0].key == key


def test_good_values_still_load():
    cfg = load_config("base", ["model.lora.rank=4", "model.target_res=224", "seed=3", "data.pairs_per_epoch=8"])
    assert cfg.model.lora.rank == 4 and cfg.seed == 3
    # zero training steps is legitimate (a sweep's untrained baseline cell, launch/sweep.py), unlike zero pairs
    assert load_config("base", ["trainer.max_steps=0"]).trainer.max_steps == 0
    edge = load_config("base", ["data.render.png_compression=9", "data.render.png_compression=0",
                                "data.pairs.true_fraction=1.0", "loss.pos_radius=0.05", "loss.neg_radius=0.06",
                                "eval.models=[oracle,pretrained_head_init]", "eval.tasks=[pose_ycbv,real_pairs]",
                                "equivariance.protocol=paper", "trainer.precision=16-mixed", "eval.device=cpu"])
    assert edge.data.render.png_compression == 0 and edge.equivariance.protocol == "paper"


def test_inherit_must_be_one_experiment_name(tmp_path, monkeypatch):
    from corr3d.config import experiments_dir

    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "base.yaml").write_text((experiments_dir() / "base.yaml").read_text())
    (exp / "a.yaml").write_text("seed: 1\n")
    (exp / "b.yaml").write_text("seed: 2\n")
    (exp / "multi.yaml").write_text("inherit: [a, b]\n")
    monkeypatch.setenv("CORR3D_EXPERIMENTS", str(exp))
    with pytest.raises(ConfigError) as info:
        load_config("multi")
    assert "inherit" in str(info.value) and "multi.yaml" in str(info.value)

"""Config range probes (issue 14): each bad value is a ConfigError that names the key, raised before any work."""
import pytest

from corr3d.config import ConfigError, load_config

PROBES = [
    ("model.lora.rank=-1", "model.lora.rank"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.target_res=0", "model.target_res"),
    ("seed=null", "seed"),
    ("data.pairs_per_epoch=0", "data.pairs_per_epoch"),
]


@pytest.mark.parametrize("override,key", PROBES)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config("base", [override])
    assert key in str(info.value)


def test_good_values_still_load():
    cfg = load_config("base", ["model.lora.rank=4", "model.target_res=224", "seed=3", "data.pairs_per_epoch=8"])
    assert cfg.model.lora.rank == 4 and cfg.seed == 3
    # zero training steps is legitimate (a sweep's untrained baseline cell, training/sweep.py), unlike zero pairs
    assert load_config("base", ["trainer.max_steps=0"]).trainer.max_steps == 0


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

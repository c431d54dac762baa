import copy
import pickle
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from corr3d.config import ConfigError, config_from_yaml, load_config
from corr3d.config_schema import ModelConfig, RenderConfig
from corr3d.utils.run_dir import create_run_dir, find_resumable_run, mark_done


def test_base_and_override_types():
    cfg = load_config("base", ["trainer.max_steps=7", "model.lora.rank=8", "optim.lr=1"])
    assert cfg.trainer.max_steps == 7 and cfg.model.lora.rank == 8 and cfg.optim.lr == 1


def test_unknown_key_names_path_and_closest():
    with pytest.raises(ConfigError) as err:
        load_config("base", ["model.lora.rnak=8"])
    assert "'model.lora.rnak'" in str(err.value) and "'model.lora.rank'" in str(err.value)


def test_unknown_top_level_key_closest():
    with pytest.raises(ConfigError) as err:
        load_config("base", ["trainr.max_steps=8"])
    assert "'trainr'" in str(err.value) and "trainer" in str(err.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as err:
        load_config("base", ["trainer.max_steps=lots"])
    assert "trainer.max_steps" in str(err.value) and "int" in str(err.value)


def test_a_saved_config_comes_back_typed_and_checked():
    """SLURM jobs carry their config as YAML: it must come back on the schema's typed path, equal to the original."""
    cfg = load_config("dinov2_single_object", ["optim.lr=0.0003"])
    back = config_from_yaml(OmegaConf.to_yaml(cfg, resolve=False))
    assert OmegaConf.to_container(back, resolve=True) == OmegaConf.to_container(cfg, resolve=True)
    assert OmegaConf.get_type(back.model) is ModelConfig and OmegaConf.get_type(back.data.render) is RenderConfig
    assert OmegaConf.is_struct(back)
    with pytest.raises(ConfigError, match="'model.lora.rnak'.*'model.lora.rank'"):
        config_from_yaml("model:\n  lora:\n    rnak: 8\n", "a job")
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        config_from_yaml("trainer:\n  max_steps: lots\n", "a job")


def test_values_take_the_schema_type():
    cfg = load_config("base", ["optim.lr=1", "trainer.precision=16", "model.lora.alpha=8"])
    assert isinstance(cfg.optim.lr, float) and cfg.trainer.precision == "16" and cfg.model.lora.alpha == 8.0


def test_wrong_list_element_type_names_key():
    with pytest.raises(ConfigError, match=r"data\.render\.up\[0\].*List\[float\]"):
        load_config("base", ["data.render.up=[a,1,0]"])


def test_range_error_names_key_and_bound():
    with pytest.raises(ConfigError, match=r"'model\.lora\.rank' must be > 0, got 0"):
        load_config("base", ["model.lora.rank=0"])
    with pytest.raises(ConfigError, match=r"'seed'.*int"):
        load_config("base", ["seed=null"])


def test_inherit_must_be_a_string(tmp_path, monkeypatch):
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    (exp_dir / "base.yaml").write_text((Path(__file__).parents[1] / "experiments/base.yaml").read_text())
    (exp_dir / "listed.yaml").write_text("inherit: [a, b]\n")
    monkeypatch.setenv("CORR3D_EXPERIMENTS", str(exp_dir))
    with pytest.raises(ConfigError, match="inherit"):
        load_config("listed")


def test_config_is_a_dict_config_that_round_trips():
    cfg = load_config("dinov2_single_object")
    assert isinstance(cfg, DictConfig) and cfg.model.backbone == "dinov2_s14"
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(Exception):  # struct: a typo in code fails instead of reading None
        _ = cfg.model.bakbone


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("base", ["trainer.max_steps"])


def test_unknown_experiment_suggests(tmp_path):
    with pytest.raises(ConfigError, match="dinov2_single_object"):
        load_config("dinov2_single_objct")


def test_experiment_file_typo_is_caught(tmp_path, monkeypatch):
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    (exp_dir / "base.yaml").write_text((Path(__file__).parents[1] / "experiments/base.yaml").read_text())
    (exp_dir / "parent.yaml").write_text("model:\n  lora:\n    rank: 2\n")
    (exp_dir / "child.yaml").write_text("inherit: parent\noptim:\n  lr: 3.0e-4\n")
    (exp_dir / "bad.yaml").write_text("optim:\n  learning_rate: 1.0\n")
    monkeypatch.setenv("CORR3D_EXPERIMENTS", str(exp_dir))
    cfg = load_config("child")
    assert cfg.model.lora.rank == 2 and cfg.optim.lr == 3.0e-4 and cfg.experiment == "child"
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*bad.yaml"):
        load_config("bad")


def test_tiny_fixture_is_the_real_config_shrunk(cfg_tiny, tmp_path):
    assert cfg_tiny.experiment == "dinov2_single_object" and cfg_tiny.model.backbone == "test_vit.r160_in1k"
    assert cfg_tiny.data.rendered_dir == str(tmp_path / "data" / "rendered")  # interpolations follow data_root
    cfg_tiny.trainer.max_steps = 2  # tests change what they need by attribute, type-checked
    with pytest.raises(Exception):
        cfg_tiny.trainer.max_steps = "lots"


def test_run_dir_written_and_resumable(cfg_tiny, tmp_path):
    cfg = cfg_tiny
    cfg.output_dir, cfg.experiment = str(tmp_path), "demo"
    run = create_run_dir(cfg)
    assert (run / "config.yaml").exists() and (run / "env.json").exists()
    assert (tmp_path / "demo" / "latest").resolve() == run.resolve()
    assert OmegaConf.load(run / "config.yaml").experiment == "demo"
    # same config, unfinished -> reused; finished -> new directory
    assert find_resumable_run(tmp_path / "demo", cfg) == run.resolve()
    assert create_run_dir(cfg).resolve() == run.resolve()
    mark_done(run)
    run2 = create_run_dir(cfg)
    assert run2.resolve() != run.resolve()
    assert (tmp_path / "demo" / "latest").resolve() == run2.resolve()
    # different config -> not resumed
    cfg3 = copy.deepcopy(cfg)
    cfg3.seed = 1
    assert create_run_dir(cfg3).resolve() != run2.resolve()

"""The launcher's config -> sbatch translation, without a cluster (the cluster tests are in test_slurm.py)."""
from __future__ import annotations

import pytest

from corr3d.config import ConfigError, load_config
from corr3d.launch import slurm


def slurm_cfg(*overrides: str, experiment: str = "dinov2_b14_objaverse"):
    return load_config(experiment, ["launcher.name=slurm", *overrides])


def script_lines(cfg, run="/scratch/run") -> set[str]:
    cfg = slurm.align_trainer_with_launcher(cfg)
    return set(slurm.sbatch_script(slurm.train_executor(cfg, run)).splitlines())


def test_two_nodes_of_eight_gpus_give_one_task_per_gpu():
    cfg = slurm_cfg("launcher.nodes=2", "launcher.gpus_per_node=8", "launcher.partition=gpu", "launcher.account=vision",
                    "launcher.time_min=2880", "launcher.setup=[module load cuda]")
    lines = script_lines(cfg)
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--account=vision",
                 "--time=2880", "--signal=USR2@120", "--job-name=corr3d-train-dinov2_b14_objaverse"):
        assert f"#SBATCH {flag}" in lines
    assert "module load cuda" in lines
    assert "#SBATCH --output=/scratch/run/slurm/%j/%j_0_log.out" in lines  # logs inside the run directory


def test_trainer_follows_launcher_and_back():
    cfg = slurm.align_trainer_with_launcher(slurm_cfg("launcher.nodes=2", "launcher.gpus_per_node=8"))
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (8, 2)
    cfg = slurm.align_trainer_with_launcher(slurm_cfg("trainer.devices=4"))
    assert (cfg.launcher.gpus_per_node, cfg.trainer.devices) == (4, 4)
    with pytest.raises(ConfigError, match="trainer.devices=4 but launcher.gpus_per_node=8"):
        slurm.align_trainer_with_launcher(slurm_cfg("trainer.devices=4", "launcher.gpus_per_node=8"))


def test_typed_config_values_reach_submitit_as_ints():
    """The launcher passes config numbers through without int(): the schema already makes them ints (an override
    like launcher.time_min=90 arrives as 90), which is what submitit formats into the batch script."""
    cfg = slurm.align_trainer_with_launcher(slurm_cfg("launcher.nodes=2", "launcher.gpus_per_node=8",
                                                      "launcher.time_min=90", "launcher.max_requeues=7"))
    params = slurm.slurm_parameters(cfg.launcher, name="n", nodes=cfg.trainer.num_nodes,
                                    tasks_per_node=cfg.trainer.devices,
                                    gpus_per_node=slurm.gpus_per_task_node(cfg, cfg.trainer.devices))
    numbers = ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min", "slurm_signal_delay_s",
               "slurm_array_parallelism", "gpus_per_node")
    assert {k: type(params[k]) for k in numbers} == {k: int for k in numbers}
    assert (params["nodes"], params["tasks_per_node"], params["timeout_min"]) == (2, 8, 90)
    assert type(cfg.trainer.devices) is int and type(slurm.eval_gpus(cfg)) is int
    executor = slurm.train_executor(cfg, "/scratch/run")
    assert executor._executor.max_num_timeout == 7 and type(executor._executor.max_num_timeout) is int


def test_gres_cpu_runs_and_extra_options():
    lines = script_lines(slurm_cfg("launcher.gpus_per_node=8", "launcher.gres=gpu:a100:8",
                                   "launcher.extra={exclude: node12}"))
    assert {"#SBATCH --gres=gpu:a100:8", "#SBATCH --exclude=node12"} <= lines
    assert not any("--gpus-per-node" in line for line in lines)
    assert slurm._gres_for("gpu:a100:8", 1) == "gpu:a100:1" and slurm._gres_for("gpu", 2) == "gpu:2"
    cpu = script_lines(slurm_cfg("trainer.devices=2", "trainer.accelerator=cpu", experiment="dinov2_single_object"))
    assert "#SBATCH --ntasks-per-node=2" in cpu and not any("gpu" in line for line in cpu)


def test_chunks_and_experiment_objects(tmp_path):
    assert slurm.chunked(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    listing = tmp_path / "objects.txt"
    listing.write_text("objaverse:u1\nobjaverse:u2\nobjaverse:u3\n")
    cfg = load_config("dinov2_single_object", ["data.train_objects=[procedural:hemisphere]",
                                               f"data.object_list={listing}", "data.num_train_objects=2",
                                               "equivariance.objects=[procedural:torus_coffee]"])
    assert slurm.experiment_object_specs(cfg) == ["procedural:hemisphere", "objaverse:u1", "procedural:torus_coffee"]

"""Object pose on YCB-Video in the BOP format (the paper's BOP numbers): matches to the object model, then PnP."""
from __future__ import annotations

from pathlib import Path

from corr3d.eval.datasets import bop
from corr3d.eval.pose_ycbv import evaluate_bop_dataset
from corr3d.eval.tasks.base import EvalTask, OfflineSource, RealSource, is_oracle_model


class PoseYcbvTask(EvalTask):
    name = "pose_ycbv"
    order = 4
    cost = 2.0
    section = "pose_ycbv"
    headline = ("ar_bop", "ar", "ar_vsd", "ar_mssd", "ar_mspd", "acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg",
                "add_s_auc", "add_s@0.1d")
    offline_sources = (OfflineSource("offline_ycbv", "offline/pose_ycbv/", "bop",
                                     lambda paths: {"test_dir": paths["bop_ycbv_test"],
                                                    "models_dir": paths["bop_ycbv_models"], "targets": None}),)

    def real_sources(self):
        return (RealSource("ycbv", "pose_ycbv/",
                           lambda y: {"test_dir": Path(y.test_dir), "models_dir": Path(y.models_dir),
                                      "targets": y.targets},
                           lambda y: bop.data_present(y.test_dir, y.models_dir),
                           lambda y: "YCB-V missing — " + bop.DOWNLOAD_HINT.format(test_dir=y.test_dir,
                                                                                  models_dir=y.models_dir)),)

    def run(self, cfg, model, dataset, desc):
        ycbv = cfg.eval.pose_ycbv
        features = None if is_oracle_model(model) else model   # None: ground-truth matches (the ceiling)
        return evaluate_bop_dataset(features, dataset.paths["test_dir"], dataset.paths["models_dir"], ycbv,
                                    seed=cfg.eval.seed,
                                    ref_step=ycbv.offline_ref_step if dataset.offline else ycbv.ref_step,
                                    scene_ids=None if dataset.offline else (list(ycbv.scenes) or None),
                                    targets_file=dataset.paths["targets"], prefix=dataset.prefix, desc=desc)

    def protocol(self, cfg, dataset):
        y = cfg.eval.pose_ycbv
        ransac = getattr(y, "ransac", "paper")
        label = "paper" if ransac == "paper" and float(y.ransac_reproj_px) == 8.0 and int(y.ransac_iters) == 10000 \
            else "corr3d"
        return label, (f"{'EPnP RANSAC' if ransac == 'paper' else 'USAC'} {float(y.ransac_reproj_px):g} px, "
                       f"{int(y.ransac_iters)} iterations; ar*: BOP19 (official)")


TASK = PoseYcbvTask()

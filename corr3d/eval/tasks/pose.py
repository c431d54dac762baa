"""One-shot object pose on OnePose-LowTexture (the paper's Table 1): 2D-3D matches from features, then PnP RANSAC."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from corr3d.eval.datasets import onepose
from corr3d.eval.pose import evaluate_objects, evaluate_oracle_pose
from corr3d.eval.tasks.base import EvalTask, OfflineSource, RealSource, is_oracle_model, with_skipped


class PoseTask(EvalTask):
    name = "pose"
    order = 0
    cost = 5.0
    section = "pose"
    headline = ("acc@1cm1deg", "acc@3cm3deg", "acc@5cm5deg")
    offline_sources = (OfflineSource("offline_onepose", "offline/pose/", "onepose",
                                     lambda paths: {"data_dir": paths["onepose_data"],
                                                    "sfm_dir": paths["onepose_sfm"]}),)

    def real_sources(self):
        return (RealSource("onepose_lowtexture", "pose/",
                           lambda p: {"data_dir": Path(p.data_dir), "sfm_dir": Path(p.sfm_dir)},
                           lambda p: onepose.data_present(p.data_dir, p.sfm_dir),
                           lambda p: "real data missing — " + onepose.DOWNLOAD_HINT.format(data_dir=p.data_dir,
                                                                                           sfm_dir=p.sfm_dir)),)

    def run(self, cfg, model, dataset, desc):
        pose = cfg.eval.pose
        selection = list(pose.objects) or None
        if selection and dataset.offline:
            # eval.pose.objects may name real objects, the suite's or both: the suite keeps the names it has
            # (none of them: the whole suite), the real set must have every name (a typo is an error there)
            available = {p.name for p in onepose.object_dirs(Path(dataset.paths["data_dir"]))}
            selection = [name for name in selection if name in available] or None
        objects = onepose.list_objects(dataset.paths["data_dir"], dataset.paths["sfm_dir"], selection,
                                       pose.ref_seq, pose.test_seq)
        if dataset.offline:   # the suite's short test captures: its own query step
            pose = OmegaConf.merge(pose, {"query_step": pose.offline_query_step})
        if is_oracle_model(model):   # ground-truth 2D-3D matches -> the same PnP (the ceiling)
            result = evaluate_oracle_pose(objects, pose, seed=cfg.eval.seed, prefix=dataset.prefix, desc=desc)
        else:
            result = evaluate_objects(model, objects, pose, seed=cfg.eval.seed, prefix=dataset.prefix, desc=desc)
        return with_skipped(result, objects)

    def protocol(self, cfg, dataset):
        p = cfg.eval.pose
        paper = (getattr(p, "ransac", "paper") == "paper" and float(p.ransac_reproj_px) == 8.0
                 and int(p.ransac_iters) == 10000)
        detail = (f"{'EPnP RANSAC' if getattr(p, 'ransac', 'paper') == 'paper' else 'USAC'} "
                  f"{float(p.ransac_reproj_px):g} px, {int(p.ransac_iters)} iterations, query step "
                  f"{p.offline_query_step if dataset.offline else p.query_step}")
        return ("paper" if paper else "corr3d"), detail


TASK = PoseTask()

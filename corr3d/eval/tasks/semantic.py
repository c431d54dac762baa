"""Semantic correspondence on PF-PASCAL and SPair-71k (the paper's Table 1): keypoint transfer, PCK."""
from __future__ import annotations

from pathlib import Path

from corr3d.eval.datasets import pfpascal, spair
from corr3d.eval.semantic import GroundTruthMatcher, SemanticMatcher, evaluate_pfpascal, evaluate_spair
from corr3d.eval.tasks.base import EvalTask, OfflineSource, RealSource, is_oracle_model


class SemanticTask(EvalTask):
    name = "semantic"
    order = 2
    cost = 2.0
    section = "semantic"
    headline = ("pck@0.05", "pck@0.10", "pck@0.15", "pck_bbox@0.10", "same/pck@0.10", "spair/pck@0.10",
                "spair/pck_img@0.10")
    breakdowns = (("spair/pck@0.10", "viewpoint", None),)   # SPair's viewpoint-variation difficulty 0 / 1 / 2
    offline_sources = (OfflineSource("offline_pfpascal", "offline/semantic/", "semantic",
                                     lambda paths: {"path": paths["pfpascal"]}),
                       OfflineSource("offline_spair", "offline/semantic/spair/", "semantic",
                                     lambda paths: {"path": paths["spair"]}))

    def real_sources(self):
        return (RealSource("pfpascal", "semantic/", lambda s: {"path": Path(s.pfpascal_dir)},
                           lambda s: pfpascal.data_present(s.pfpascal_dir),
                           lambda s: "PF-PASCAL missing — " + pfpascal.DOWNLOAD_HINT.format(path=s.pfpascal_dir)),
                RealSource("spair", "semantic/spair/", lambda s: {"path": Path(s.spair_dir)},
                           lambda s: spair.data_present(s.spair_dir, s.spair_split),
                           lambda s: "SPair-71k missing — " + spair.DOWNLOAD_HINT.format(path=s.spair_dir)))

    def run(self, cfg, model, dataset, desc):
        semantic = cfg.eval.semantic
        size = cfg.eval.offline.semantic_image_size if dataset.offline else semantic.image_size
        if is_oracle_model(model):   # ground-truth keypoints (the ceiling)
            matcher = GroundTruthMatcher(semantic, image_size=size)
        else:
            matcher = SemanticMatcher(model, semantic, cache_size=cfg.eval.feature_cache_size, image_size=size,
                                      batch_size=int(cfg.eval.batch_size))
        if dataset.name.endswith("pfpascal"):
            return evaluate_pfpascal(matcher, dataset.paths["path"], list(semantic.pfpascal_views), dataset.prefix,
                                     desc)
        return evaluate_spair(matcher, dataset.paths["path"], semantic.spair_split, dataset.prefix, desc)

    def protocol(self, cfg, dataset):
        s = cfg.eval.semantic
        size = cfg.eval.offline.semantic_image_size if dataset.offline else s.image_size
        if dataset.name.endswith("pfpascal"):
            return ("paper" if int(size) == 840 else "corr3d"), \
                f"PF-PASCAL PCK@img (per keypoint) and PCK@bbox, images {size} px"
        return ("paper" if int(size) == 840 else "corr3d"), f"SPair-71k PCK@bbox and PCK@img, images {size} px"


TASK = SemanticTask()

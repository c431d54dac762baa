"""Point tracking on TAP-Vid DAVIS (the paper's Table 1): features of every frame, soft-argmax tracks, occlusion.

Each TAP-Vid dataset is measured in the headline protocol (``eval.tracking.query_mode`` at ``frame_size``: the
paper's strided queries at 854x476, keys ``tracking/...``) and in every ``eval.tracking.variants`` entry,
``<mode>`` or ``<mode>@256`` (tapnet's 256x256 frames), keys ``tracking/<mode>[_256]/...``: tapnet reports both
query modes, and both resolutions apart. Each is one dataset element; frames shared by two variants at the same
size are computed once (corr3d/models/shared.py).
"""
from __future__ import annotations

from pathlib import Path

from corr3d.eval.datasets import tapvid
from corr3d.eval.tasks.base import Dataset, EvalTask, OfflineSource, RealSource, is_oracle_model, with_skipped
from corr3d.eval.tracking import evaluate_oracle_tracking, evaluate_videos

TAPNET_SIZE = [256, 256]
VARIANTS = ("strided", "first", "strided@256", "first@256")   # config_schema: eval.tracking.variants


def parse_variant(variant: str) -> tuple[str, bool]:
    """``"first@256"`` -> ("first", True): query mode and whether frames are resized to 256x256."""
    mode, _, size = variant.partition("@")
    if mode not in ("strided", "first") or size not in ("", "256"):
        raise ValueError(f"eval.tracking.variants: {variant!r} is not one of {VARIANTS}")
    return mode, size == "256"


class TrackingTask(EvalTask):
    name = "tracking"
    order = 1
    cost = 1.5
    section = "tracking"
    headline = ("aj", "delta_avg", "oa", "first/aj", "first/delta_avg", "first/oa", "strided_256/aj",
                "first_256/aj")
    offline_sources = (OfflineSource("offline_tapvid", "offline/tracking/", "tapvid",
                                     lambda paths: {"path": paths["tapvid"]}),)

    def real_sources(self):
        return (RealSource("tapvid_davis", "tracking/", lambda t: {"path": Path(t.data)},
                           lambda t: Path(t.data).exists(),
                           lambda t: "real data missing — " + tapvid.DOWNLOAD_HINT.format(path=t.data)),)

    def datasets(self, cfg, messages, suite=None):
        """Each TAP-Vid dataset in the headline protocol, then in each variant (its own name and key prefix)."""
        t = cfg.eval.tracking
        out = []
        for ds in super().datasets(cfg, messages, suite):
            out.append(Dataset(ds.name, ds.prefix, ds.source, {**ds.paths, "mode": t.query_mode, "resize": False}))
            for variant in t.variants:
                mode, resize = parse_variant(str(variant))
                if mode == t.query_mode and not resize:
                    continue   # the headline protocol itself
                tag = mode + ("_256" if resize else "")
                out.append(Dataset(f"{ds.name}@{tag}", f"{ds.prefix}{tag}/", ds.source,
                                   {**ds.paths, "mode": mode, "resize": resize}))
        return out

    def _frame_size(self, cfg, dataset):
        t, o = cfg.eval.tracking, cfg.eval.offline
        if dataset.paths.get("resize"):
            return TAPNET_SIZE
        # the offline suite's small videos: their own size unless eval.offline.tracking_frame_size
        return (o.tracking_frame_size or None) if dataset.offline else t.frame_size

    def run(self, cfg, model, dataset, desc):
        t, o = cfg.eval.tracking, cfg.eval.offline
        videos = tapvid.iter_videos(dataset.paths["path"], dataset.paths.get("mode", t.query_mode), t.query_stride,
                                    t.format, t.frames_dir, t.max_videos)
        if is_oracle_model(model):   # ground-truth tracks and occlusion (the ceiling)
            return with_skipped(evaluate_oracle_tracking(videos, t, dataset.prefix, desc), videos)
        radius = o.tracking_argmax_radius if dataset.offline else t.argmax_radius
        return with_skipped(evaluate_videos(model, videos, t, frame_size=self._frame_size(cfg, dataset),
                                            argmax_radius=radius, batch_size=cfg.eval.batch_size,
                                            prefix=dataset.prefix, desc=desc), videos)

    def protocol(self, cfg, dataset):
        t = cfg.eval.tracking
        mode = dataset.paths.get("mode", t.query_mode)
        size = self._frame_size(cfg, dataset)
        size_text = f"{size[1]}x{size[0]}" if size else "native size"
        paper = mode == "strided" and not dataset.offline and list(size or []) == [476, 854]
        label = "paper" if paper else ("official" if mode == "first" or list(size or []) == TAPNET_SIZE
                                       else "corr3d")
        where = "offline suite, " if dataset.offline else ""
        return label, f"{where}TAP-Vid {mode} queries (stride {t.query_stride}), frames {size_text}"


TASK = TrackingTask()

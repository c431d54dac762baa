"""Point tracking on TAP-Vid DAVIS (the paper's Table 1): features of every frame, soft-argmax tracks, occlusion."""
from __future__ import annotations

from pathlib import Path

from corr3d.eval.datasets import tapvid
from corr3d.eval.tracking import evaluate_oracle_tracking, evaluate_videos
from corr3d.eval.tasks.base import EvalTask, OfflineSource, RealSource, is_oracle_model, with_skipped


class TrackingTask(EvalTask):
    name = "tracking"
    order = 1
    section = "tracking"
    headline = ("aj", "delta_avg", "oa")
    offline_sources = (OfflineSource("offline_tapvid", "offline/tracking/", "tapvid",
                                     lambda paths: {"path": paths["tapvid"]}),)

    def real_sources(self):
        return (RealSource("tapvid_davis", "tracking/", lambda t: {"path": Path(t.data)},
                           lambda t: Path(t.data).exists(),
                           lambda t: "real data missing — " + tapvid.DOWNLOAD_HINT.format(path=t.data)),)

    def run(self, cfg, model, dataset, desc):
        t, o = cfg.eval.tracking, cfg.eval.offline
        videos = tapvid.iter_videos(dataset.paths["path"], t.query_mode, t.query_stride, t.format, t.frames_dir,
                                    t.max_videos)
        if is_oracle_model(model):   # ground-truth tracks and occlusion (the ceiling)
            return with_skipped(evaluate_oracle_tracking(videos, t, dataset.prefix, desc), videos)
        # the offline suite's small videos: their own size unless eval.offline.tracking_frame_size, a smaller radius
        frame_size, radius = (o.tracking_frame_size or None, o.tracking_argmax_radius) if dataset.offline \
            else (t.frame_size, t.argmax_radius)
        return with_skipped(evaluate_videos(model, videos, t, frame_size=frame_size, argmax_radius=radius,
                                            batch_size=cfg.eval.batch_size, prefix=dataset.prefix, desc=desc), videos)

    def protocol(self, cfg, dataset):
        t, o = cfg.eval.tracking, cfg.eval.offline
        size = (o.tracking_frame_size or None) if dataset.offline else t.frame_size
        size_text = f"{size[1]}x{size[0]}" if size else "native size"
        paper = t.query_mode == "strided" and not dataset.offline and list(size or []) == [476, 854]
        label = "paper" if paper else ("official" if t.query_mode == "first" or list(size or []) == [256, 256]
                                       else "corr3d")
        return label, f"TAP-Vid {t.query_mode} queries (stride {t.query_stride}), frames {size_text}"


TASK = TrackingTask()

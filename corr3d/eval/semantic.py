"""Semantic correspondence: PF-PASCAL (3DCorrEnhance protocol) and SPair-71k.

Protocol (the authors'): each image is resized so its long side is ``image_size`` (840, LANCZOS) and zero-padded to a
centred ``image_size`` square; the whole square is the ViT input (snapped down to a multiple of the patch). Source
keypoint features are sampled bilinearly (patch-centre aligned) and L2-normalised; the prediction is the argmax over
every pixel of the target square of the dot product with the bilinearly upsampled (not re-normalised) target map.

Because bilinear upsampling is linear, ``<f_src, up(F_trg)(p)> = up(<f_src, F_trg>)(p)``: we take the dot product at
feature resolution (N x h x w) and upsample the N similarity maps instead of the C-channel feature map
(``similarity: upsample_similarity``, default; ``upsample_features`` is the authors' order, kept for checks/bench).

Maps: ``normalize_maps`` false (default, the authors' code): the raw map of the model (conv head output) - source
keypoint features are sampled from it and L2-normalised, the target map is used as is (plain dot product,
as the authors); true: per-token L2-normalised maps on both sides. Every compared model uses the same choice.

PCK: error < alpha * image_size (relative to the padded image, as the paper) and < alpha * max(bbox w, h) of the
target (literature). PF-PASCAL reports per class and the pair-weighted class mean; SPair-71k PCK@0.1 per keypoint and
per image, by viewpoint variation.
"""
from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from corr3d.eval.datasets import pfpascal, spair
from corr3d.eval.features import FeatureCache, extract_maps, model_device, sample, snap_to_patch, to_tensor
from corr3d.eval.matching import blocked_argmax, block_rows
from corr3d.eval.metrics.semantic import PCKMetric
from corr3d.geometry.pixels import pixel_centres, pixel_grid_tensor

log = logging.getLogger(__name__)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize the long side to ``size`` (LANCZOS) and zero-pad to a centred square (3DCorrEnhance's ``resize``).

    Returns (square uint8, per-axis scale (sx, sy), offset (ox, oy)); a point maps as ``p * scale + offset``.
    """
    h, w = image.shape[:2]
    if h <= w:
        new_w, new_h = size, int(np.around(size * h / w))
    else:
        new_w, new_h = int(np.around(size * w / h)), size
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    oy, ox = (size - new_h) // 2, (size - new_w) // 2
    canvas[oy:oy + new_h, ox:ox + new_w] = resized
    return canvas, np.array([new_w / w, new_h / h]), np.array([ox, oy], dtype=np.float64)


def upsample_to_pixels(model, fmap: torch.Tensor, image_size: tuple[int, int], input_size: tuple[int, int],
                       chunk: int = 65536, stride: int | None = None) -> torch.Tensor:
    """(K, h, w) map -> (K, H*W) values at every pixel centre (row-major), patch-centre aligned bilinear."""
    pts = pixel_grid_tensor(image_size, device=fmap.device)
    out = [sample(model, fmap, pts[s:s + chunk], image_size, input_size, stride, normalize=False).T
           for s in range(0, len(pts), chunk)]
    return torch.cat(out, dim=1)


@torch.no_grad()
def similarity_argmax(model, src_feats: torch.Tensor, fmap_trg: torch.Tensor, image_size: tuple[int, int],
                      input_size: tuple[int, int], method: str = "upsample_similarity",
                      chunk: int = 65536, memory_budget_mb: float = 64.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target pixel for each source feature (N, C): (xy (N, 2) pixel centres, best score (N,)).

    The pixels are scored in blocks (``matching.blocked_argmax``): at most ``chunk`` pixels and one block of scores
    (plus, for ``upsample_features``, of upsampled features) within ``memory_budget_mb``. Every pixel's score is
    the same number whatever the block (bilinear sampling is per point), and ties go to the lowest pixel index as
    an argmax over the whole row, so the ``upsample_similarity`` result does not depend on the blocking
    (``upsample_features``: the (N, C) x (C, block) GEMM may round differently per block shape, as with
    ``pixel_chunk`` before)."""
    h, w = image_size
    src = src_feats.to(fmap_trg.dtype)
    pts = pixel_grid_tensor(image_size, device=src.device)
    if method == "upsample_similarity":
        sim_lr = torch.einsum("nc,chw->nhw", src, fmap_trg)

        def scores(s: int, e: int) -> torch.Tensor:   # (N, e - s): the upsampled similarity maps at these pixels
            return sample(model, sim_lr, pts[s:e], image_size, input_size, normalize=False).T
        per_pixel = len(src)
    elif method == "upsample_features":
        def scores(s: int, e: int) -> torch.Tensor:   # the dot product with the upsampled target features
            return src @ sample(model, fmap_trg, pts[s:e], image_size, input_size, normalize=False).T
        per_pixel = len(src) + fmap_trg.shape[0]
    else:
        raise ValueError(f"unknown similarity method {method!r}")
    block = min(int(chunk), block_rows(per_pixel, memory_budget_mb))
    res = blocked_argmax(scores, len(src), len(pts), block)
    idx, best = res.index, res.score
    xy = pixel_centres(torch.div(idx, w, rounding_mode="floor"), idx % w)
    return xy, best


class SemanticMatcher:
    """Letterboxes, extracts (cached) maps and transfers keypoints for one model.

    ``semantic``: the ``eval.semantic`` section; ``cache_size``: feature maps kept (``eval.feature_cache_size``);
    ``image_size`` replaces ``semantic.image_size`` (the offline suite's); ``batch_size``: images per forward pass
    in :meth:`transfer_all` (``eval.batch_size``; every letterboxed square has the same size, so any images batch).

    :meth:`transfer_all` (what the evaluations use) knows the whole pair list, so it computes each image's map once
    when ``cache_size`` maps can hold the images between their uses: it evicts the map whose next use is farthest
    (none: first), where an LRU recomputed 28% of the offline PF-PASCAL images; and it extracts the next
    ``batch_size`` missing images in one forward pass (a forward of 4 images cost ~1/3 of 4 single forwards on
    2 shared cores). On CPU a batched forward gives every image the bit-identical map (tested); on CUDA batching
    may change the last bits of a map."""

    def __init__(self, model, semantic, *, cache_size: int, image_size: int | None = None, batch_size: int = 4):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 image, got {batch_size}")
        self.model = model
        self.semantic = semantic
        self.size = semantic.image_size if image_size is None else image_size
        side = snap_to_patch(self.size, model.patch_size)
        self.input_size = (side, side)
        self.cache = FeatureCache(cache_size)
        self.cache_size = max(2, int(cache_size))   # a pair needs both of its maps at once
        self.batch_size = int(batch_size)
        self.extracted = 0   # images put through the model (by prepare and transfer_all)

    def _maps(self, paths: Sequence[Path]) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        """(map, scale, offset) of each image, all in one forward pass."""
        squares, geometry = [], []
        for path in paths:
            image = np.asarray(Image.open(path).convert("RGB"))
            square, scale, offset = letterbox(image, self.size)
            squares.append(square)
            geometry.append((scale, offset))
        if self.semantic.normalize_maps:
            maps = extract_maps(self.model, squares, self.input_size, batch_size=len(squares))
        else:   # the model's raw map (not normalised per token), as in the authors' transfer
            with torch.no_grad():
                maps = list(self.model(to_tensor(squares, model_device(self.model)), input_size=self.input_size))
        self.extracted += len(paths)
        return [(fmap.float(), scale, offset) for fmap, (scale, offset) in zip(maps, geometry)]

    def prepare(self, path: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        return self.cache.get(str(path), lambda: self._maps([path])[0])

    def _transfer(self, pair, src_map, trg_map) -> dict:
        (fmap_s, scale_s, off_s), (fmap_t, scale_t, off_t) = src_map, trg_map
        src = pair.src_kps * scale_s + off_s
        trg = pair.trg_kps * scale_t + off_t
        feats = sample(self.model, fmap_s, src, (self.size, self.size), self.input_size)
        pred, _ = similarity_argmax(self.model, feats, fmap_t, (self.size, self.size), self.input_size,
                                    self.semantic.similarity, self.semantic.pixel_chunk)
        box = pair.trg_bbox * np.concatenate([scale_t, scale_t])
        bbox_ref = float(max(box[2] - box[0], box[3] - box[1]))
        return {"pred": pred.cpu().numpy().astype(np.float64), "gt": trg, "valid": pair.valid, "bbox_ref": bbox_ref}

    def transfer(self, pair) -> dict:
        return self._transfer(pair, self.prepare(pair.src_path), self.prepare(pair.trg_path))

    def transfer_all(self, pairs: Sequence) -> Iterator[dict]:
        """:meth:`transfer` of every pair, in order (a generator), with planned, batched feature extraction."""
        keys = [str(p) for pair in pairs for p in (pair.src_path, pair.trg_path)]
        paths = {str(p): p for pair in pairs for p in (pair.src_path, pair.trg_path)}
        uses: dict[str, deque] = {}
        for pos, key in enumerate(keys):
            uses.setdefault(key, deque()).append(pos)
        store: dict[str, tuple] = {}
        for i, pair in enumerate(pairs):
            now = keys[2 * i:2 * i + 2]
            for key in now:    # positions up to this pair are past
                while uses[key] and uses[key][0] < 2 * i + 2:
                    uses[key].popleft()
            if any(k not in store for k in now):
                batch = list(dict.fromkeys(k for k in now if k not in store))
                # then the next missing images in order of use, up to a batch and never more than the cache holds
                for key in keys[2 * i + 2:2 * i + 2 * self.cache_size]:
                    if len(batch) >= min(self.batch_size, self.cache_size):
                        break
                    if key not in store and key not in batch:
                        batch.append(key)
                store.update(zip(batch, self._maps([paths[k] for k in batch])))
                while len(store) > self.cache_size:   # the map needed farthest ahead (or never again) goes
                    victim = max((k for k in store if k not in now),
                                 key=lambda k: uses[k][0] if uses[k] else len(keys))
                    del store[victim]
            yield self._transfer(pair, store[now[0]], store[now[1]])


def _pck_row(pair, out, alphas, size) -> dict:
    valid = out["valid"]
    err = np.linalg.norm(out["pred"] - out["gt"], axis=1)[valid]
    row = {"pair": pair.pair_id, "category": pair.category, "keypoints": int(valid.sum()),
           "src": Path(pair.src_path).name, "trg": Path(pair.trg_path).name}
    for k in ("viewpoint_variation",):
        if k in pair.meta:
            row[k] = pair.meta[k]
    for a in alphas:
        row[f"pck@{a:.2f}"] = float(100 * np.mean(err < a * size)) if len(err) else float("nan")
        row[f"pck_bbox@{a:.2f}"] = float(100 * np.mean(err < a * out["bbox_ref"])) if len(err) else float("nan")
    return row


class GroundTruthMatcher:
    """The oracle "matcher": transfers every keypoint to its true target position, snapped to the pixel centre the
    argmax over the letterboxed square would return (so the ceiling keeps the protocol's pixel quantisation)."""

    def __init__(self, semantic, image_size: int | None = None):
        self.semantic = semantic
        self.size = semantic.image_size if image_size is None else image_size

    def transfer(self, pair) -> dict:
        with Image.open(pair.trg_path) as img:
            w, h = img.size
        scale_t, off_t = letterbox_geometry(h, w, self.size)
        trg = pair.trg_kps * scale_t + off_t
        pred = np.clip(np.floor(trg), 0, self.size - 1) + 0.5
        box = pair.trg_bbox * np.concatenate([scale_t, scale_t])
        bbox_ref = float(max(box[2] - box[0], box[3] - box[1]))
        return {"pred": pred.astype(np.float64), "gt": trg, "valid": pair.valid, "bbox_ref": bbox_ref}


def letterbox_geometry(h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) that :func:`letterbox` applies to an (h, w) image, without resizing it."""
    if h <= w:
        new_w, new_h = size, int(np.around(size * h / w))
    else:
        new_w, new_h = int(np.around(size * w / h)), size
    return np.array([new_w / w, new_h / h]), np.array([(size - new_w) // 2, (size - new_h) // 2], dtype=np.float64)


def _pair_hits(out: dict, alphas, size: float) -> tuple[int, dict[str, int]]:
    """(valid keypoints, {"img@a" / "bbox@a": hits}) of one transferred pair (the tests PCKMetric applies)."""
    valid = np.asarray(out["valid"], dtype=bool)
    err = np.linalg.norm(np.asarray(out["pred"]) - np.asarray(out["gt"]), axis=1)[valid]
    hits = {}
    for a in alphas:
        hits[f"img@{a:.2f}"] = int(np.sum(err < a * size))
        hits[f"bbox@{a:.2f}"] = int(np.sum(err < a * out["bbox_ref"]))
    return int(valid.sum()), hits


def transfers(matcher, pairs: Sequence) -> Iterator[dict]:
    """The matcher's transfer of every pair, in order: planned and batched when it has ``transfer_all``."""
    if hasattr(matcher, "transfer_all"):
        return matcher.transfer_all(pairs)
    return (matcher.transfer(pair) for pair in pairs)


def _item_id(pair) -> str:
    return f"{pair.pair_id}:{Path(pair.src_path).name}>{Path(pair.trg_path).name}"


def evaluate_pfpascal(matcher: SemanticMatcher, root: Path, views: Sequence[str] = ("different", "same"),
                      prefix: str = "semantic/", desc: str = "pf-pascal") -> tuple[dict[str, float], dict[str, list]]:
    """PF-PASCAL PCK for each view list; ``views[0]`` is the headline (keys ``{prefix}pck@a``)."""
    s = matcher.semantic
    metrics: dict[str, float] = {}
    tables: dict[str, list] = {}
    for i, view in enumerate(views):
        if not pfpascal.pairs_file(root, view).exists():
            log.warning("PF-PASCAL: %s missing; skipped", pfpascal.pairs_file(root, view))
            continue
        pairs = pfpascal.load_pairs(root, view, max_pairs=s.max_pairs)
        cats = sorted({p.category for p in pairs}, key=lambda c: pfpascal.class_names(root).index(c)
                      if c in pfpascal.class_names(root) else 999)
        m_img = PCKMetric(s.alphas, cats)
        m_box = PCKMetric(s.alphas, cats)
        rows, pair_hits = [], []
        for pair, out in tqdm(zip(pairs, transfers(matcher, pairs)), total=len(pairs), desc=f"{desc} ({view})",
                              leave=False):
            pair_hits.append((pair, *_pair_hits(out, s.alphas, float(matcher.size))))
            valid = torch.from_numpy(out["valid"])
            m_img.update(torch.from_numpy(out["pred"]), torch.from_numpy(out["gt"]), float(matcher.size),
                         pair.category, valid)
            m_box.update(torch.from_numpy(out["pred"]), torch.from_numpy(out["gt"]), out["bbox_ref"], pair.category,
                         valid)
            rows.append(_pck_row(pair, out, s.alphas, matcher.size))
        p = prefix if i == 0 else f"{prefix}{view}/"
        img, box = {k: float(v) for k, v in m_img.compute().items()}, {k: float(v) for k, v in m_box.compute().items()}
        for a in s.alphas:
            t = f"{a:.2f}"
            metrics[f"{p}pck@{t}"] = img.get(f"pck_weighted@{t}", img[f"pck@{t}"])
            metrics[f"{p}pck_classmean@{t}"] = img.get(f"pck_classmean@{t}", img[f"pck@{t}"])
            metrics[f"{p}pck_kp@{t}"] = img[f"pck@{t}"]
            metrics[f"{p}pck_bbox@{t}"] = box.get(f"pck_weighted@{t}", box[f"pck@{t}"])
            metrics[f"{p}pck_bbox_kp@{t}"] = box[f"pck@{t}"]
        metrics[f"{p}num_pairs"] = img["num_pairs"]
        per_class = []
        for r_img, r_box in zip(m_img.per_category(), m_box.per_category()):
            row = dict(r_img)
            row.update({k.replace("pck@", "pck_bbox@"): v for k, v in r_box.items() if k.startswith("pck@")})
            row = {k: v for k, v in row.items() if not k.startswith("pck_img")}
            per_class.append(row)
        tables[f"pfpascal_{view}_pairs"] = rows
        tables[f"pfpascal_{view}_classes"] = per_class
        tables.setdefault("items", []).extend(_pfpascal_items(pair_hits, s.alphas, p))
    return metrics, tables


def _pfpascal_items(pair_hits: list, alphas, p: str) -> list[dict]:
    """One item per image pair (unit = the pair) reproducing the class-weighted PCK: pair i of class c with n_i
    valid keypoints has value 100 hits_i / n_i and weight pairs_c n_i / keypoints_c, so sum(w v) / sum(w) =
    sum_c pairs_c PCK_c / sum_c pairs_c over the classes with keypoints (as PCKMetric's pck_weighted)."""
    pairs_c: dict[str, int] = {}
    kps_c: dict[str, int] = {}
    for pair, n, _ in pair_hits:
        pairs_c[pair.category] = pairs_c.get(pair.category, 0) + 1
        kps_c[pair.category] = kps_c.get(pair.category, 0) + n
    items = []
    for pair, n, hits in pair_hits:
        c = pair.category
        item = {"id": _item_id(pair), "unit": _item_id(pair), "category": c,
                "weight": pairs_c[c] * n / kps_c[c] if kps_c[c] else 0.0}
        for a in alphas:
            t = f"{a:.2f}"
            item[f"{p}pck@{t}"] = 100.0 * hits[f"img@{t}"] / n if n else 0.0
            item[f"{p}pck_bbox@{t}"] = 100.0 * hits[f"bbox@{t}"] / n if n else 0.0
        items.append(item)
    return items


def evaluate_spair(matcher: SemanticMatcher, root: Path, split: str = "test", prefix: str = "semantic/spair/",
                   desc: str = "spair") -> tuple[dict[str, float], dict[str, list]]:
    """SPair-71k PCK (bbox-relative) per keypoint and per image, overall and by viewpoint variation 0/1/2."""
    s = matcher.semantic
    pairs = spair.load_pairs(root, split, max_pairs=s.max_pairs)
    cats = sorted({p.category for p in pairs})
    m_cat = PCKMetric(s.spair_alphas, cats)
    m_vp = PCKMetric(s.spair_alphas, ["0", "1", "2"])
    rows, items = [], []
    for pair, out in tqdm(zip(pairs, transfers(matcher, pairs)), total=len(pairs), desc=desc, leave=False):
        items += _spair_items(pair, *_pair_hits(out, s.spair_alphas, float(matcher.size)), s.spair_alphas, prefix)
        valid = torch.from_numpy(out["valid"])
        pred, gt = torch.from_numpy(out["pred"]), torch.from_numpy(out["gt"])
        m_cat.update(pred, gt, out["bbox_ref"], pair.category, valid)
        vp = str(int(pair.meta.get("viewpoint_variation", 0)))
        m_vp.update(pred, gt, out["bbox_ref"], vp if vp in m_vp.categories else "2", valid)
        rows.append(_pck_row(pair, out, s.spair_alphas, matcher.size))
    metrics: dict[str, float] = {}
    cat_vals = {k: float(v) for k, v in m_cat.compute().items()}
    for a in s.spair_alphas:
        t = f"{a:.2f}"
        metrics[f"{prefix}pck@{t}"] = cat_vals[f"pck@{t}"]
        metrics[f"{prefix}pck_img@{t}"] = cat_vals[f"pck_img@{t}"]
        if f"pck_classmean@{t}" in cat_vals:
            metrics[f"{prefix}pck_classmean@{t}"] = cat_vals[f"pck_classmean@{t}"]
        for r in m_vp.per_category():
            metrics[f"{prefix}vp{r['category']}/pck@{t}"] = r[f"pck@{t}"]
            metrics[f"{prefix}vp{r['category']}/pck_img@{t}"] = r[f"pck_img@{t}"]
    metrics[f"{prefix}num_pairs"] = cat_vals["num_pairs"]
    return metrics, {"skipped": list(getattr(pairs, "skipped", [])), "spair_pairs": rows,
                     "spair_categories": m_cat.per_category(),
                     "spair_viewpoints": m_vp.per_category(), "items": items}


def _spair_items(pair, n: int, hits: dict, alphas, prefix: str) -> list[dict]:
    """Two items per image pair, both with unit = the pair: ``<id>`` (weight 1; only pairs with a valid keypoint carry
    the key) holds the per-image PCK ``pck_img@a`` (a mean over pairs); ``<id>#kp`` (weight n = valid keypoints)
    holds the per-keypoint PCK ``pck@a`` (pooled over keypoints). SPair PCK is bbox-relative. Both carry the pair's
    ``viewpoint`` variation (0/1/2) when annotated."""
    per_image = {"id": _item_id(pair), "unit": _item_id(pair), "weight": 1.0, "category": pair.category}
    per_kp = {"id": f"{_item_id(pair)}#kp", "unit": _item_id(pair), "weight": float(n), "category": pair.category}
    if "viewpoint_variation" in pair.meta:   # SPair's difficulty 0/1/2: per-difficulty breakdowns of the items
        per_image["viewpoint"] = per_kp["viewpoint"] = int(pair.meta["viewpoint_variation"])
    for a in alphas:
        t = f"{a:.2f}"
        if n:
            per_image[f"{prefix}pck_img@{t}"] = 100.0 * hits[f"bbox@{t}"] / n
        per_kp[f"{prefix}pck@{t}"] = 100.0 * hits[f"bbox@{t}"] / n if n else 0.0
    return [per_image, per_kp]


def evaluate_oracle_pfpascal(root: Path, semantic, views: Sequence[str] = ("different", "same"),
                             prefix: str = "semantic/", desc: str = "pf-pascal oracle"
                             ) -> tuple[dict[str, float], dict[str, list]]:
    """:func:`evaluate_pfpascal` with the ground-truth keypoints as the transfer (the protocol's ceiling)."""
    return evaluate_pfpascal(GroundTruthMatcher(semantic), root, views, prefix, desc)


def evaluate_oracle_spair(root: Path, semantic, split: str = "test",
                          prefix: str = "semantic/spair/", desc: str = "spair oracle"
                          ) -> tuple[dict[str, float], dict[str, list]]:
    """:func:`evaluate_spair` with the ground-truth keypoints as the transfer (the protocol's ceiling)."""
    return evaluate_spair(GroundTruthMatcher(semantic), root, split, prefix, desc)

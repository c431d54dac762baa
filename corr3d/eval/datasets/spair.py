"""SPair-71k reader (the real layout).

::

    <root>/                                  e.g. data/SPair-71k
        PairAnnotation/<split>/<id>-<src>-<trg>:<category>.json
        JPEGImages/<category>/<name>.jpg
        Layout/large/<split>.txt             (optional pair list; default: every JSON of the split)

Pair JSON keys used: ``src_imname``, ``trg_imname``, ``category``, ``src_kps``, ``trg_kps`` ([[x, y], ...] 0-based
pixels), ``src_bndbox``, ``trg_bndbox`` ([x1, y1, x2, y2]), ``viewpoint_variation`` (0/1/2), ``scale_variation``,
``truncation``, ``occlusion``, ``kps_ids``, ``src_imsize`` / ``trg_imsize`` ([w, h, c]). PCK@alpha uses
alpha * max(bbox width, bbox height) of the target. Keypoints become continuous coordinates (+0.5).

Checked on load (a violation raises ``DatasetFormatError`` naming the file and the field): the same number of source
and target keypoints, keypoints inside their image (size from ``*_imsize``, else the image header), boxes non-empty
and inside the image; a pair named by ``Layout/large/<split>.txt`` must have its JSON.

Get the data: http://cvlab.postech.ac.kr/research/SPair-71k/ (SPair-71k.tar.gz).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from corr3d.errors import DatasetFormatError
from corr3d.eval.datasets.pfpascal import SemanticPair, present_keypoints
from corr3d.utils.reading import (
    ItemList,
    apply_filter,
    as_array,
    check_box,
    check_points,
    fail,
    image_size,
    reading,
)

PIXEL_OFFSET = 0.5
VIEWPOINT_VARIATIONS = (0, 1, 2)   # SPair's viewpoint-variation difficulty levels (items carry it as ``viewpoint``)
DOWNLOAD_HINT = ("SPair-71k: download http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz and "
                 "extract it so that {path}/PairAnnotation/test/*.json exists")
ANNOTATION_FIX = ("expected SPair-71k's PairAnnotation JSON (src_imname, trg_imname, category, src_kps, trg_kps, "
                  "src_bndbox, trg_bndbox, src_imsize, trg_imsize); extract the archive again")
CONVENTION = " (SPair keypoints are 0-based pixel indices; a negative coordinate marks a missing keypoint)"
KEYPOINTS_FIX = ("the annotation does not fit its image: use SPair-71k's original JPEGImages (not resized) with its "
                 "PairAnnotation files, keypoints as 0-based [x, y] pixels")


def pair_files(root: str | Path, split: str = "test") -> list[Path]:
    root = Path(root)
    layout = layout_file(root, split)
    ann_dir = root / "PairAnnotation" / split
    if layout.exists():
        names = [line.strip() for line in layout.read_text().splitlines() if line.strip()]
        return [ann_dir / f"{n}.json" for n in names]
    return sorted(ann_dir.glob("*.json"))


def layout_file(root: str | Path, split: str = "test") -> Path:
    return Path(root) / "Layout" / "large" / f"{split}.txt"


def pair_category(path: Path) -> str:
    """The category in a pair file name ``<id>-<src>-<trg>:<category>.json`` ("" when the name has none)."""
    return path.stem.rpartition(":")[2] if ":" in path.stem else ""


def load_pair(root: Path, path: Path) -> SemanticPair:
    if not path.is_file():
        layout = layout_file(root, path.parent.name)
        raise DatasetFormatError(f"pair {path.stem!r} is listed in {layout} but has no annotation file {path}",
                                 path=layout, fix="extract SPair-71k again (PairAnnotation/ and Layout/ must come "
                                                  "from the same archive)")
    with reading(path, "SPair pair annotation", ANNOTATION_FIX):
        return _load_pair(root, path)


def _image_size(root: Path, data: dict, side: str, category: str, path: Path) -> tuple[float, float] | None:
    """(width, height) of the ``side`` image: the annotation's ``<side>_imsize`` [w, h, c], else the image header;
    None when neither is available (the image is then checked when it is read)."""
    if f"{side}_imsize" in data:
        size = as_array(path, f"{side}_imsize", data[f"{side}_imsize"], (-1,), ANNOTATION_FIX)
        if len(size) < 2 or not (np.isfinite(size[:2]).all() and (size[:2] > 0).all()):
            fail(path, f"{side}_imsize", f"{size.tolist()} is not [width, height, channels]", ANNOTATION_FIX)
        return float(size[0]), float(size[1])
    image = root / "JPEGImages" / category / data[f"{side}_imname"]
    if not image.is_file():
        return None
    width, height = image_size(image, "the image is truncated or not an image: extract SPair-71k again")
    return float(width), float(height)


def _load_pair(root: Path, path: Path) -> SemanticPair:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"a JSON {type(data).__name__}, expected an object")
    category = str(data["category"])
    src_kps = as_array(path, "src_kps", data["src_kps"], (-1, 2), ANNOTATION_FIX)
    trg_kps = as_array(path, "trg_kps", data["trg_kps"], (-1, 2), ANNOTATION_FIX)
    if len(src_kps) != len(trg_kps):
        fail(path, "src_kps/trg_kps", f"{len(src_kps)} source and {len(trg_kps)} target keypoints; SPair lists the "
                                      "keypoints common to both images, pairwise", ANNOTATION_FIX)
    if "kps_ids" in data and len(data["kps_ids"]) != len(src_kps):
        fail(path, "kps_ids", f"{len(data['kps_ids'])} ids for {len(src_kps)} keypoints", ANNOTATION_FIX)
    src_present, trg_present = present_keypoints(src_kps), present_keypoints(trg_kps)
    valid = src_present & trg_present
    boxes = {}
    for side, kps, present in (("src", src_kps, src_present), ("trg", trg_kps, trg_present)):
        size = _image_size(root, data, side, category, path)
        if size is not None:
            check_points(path, f"{side}_kps", kps[present] + PIXEL_OFFSET, *size, fix=KEYPOINTS_FIX,
                         convention=CONVENTION, file_offset=PIXEL_OFFSET)
        boxes[side] = check_box(path, f"{side}_bndbox", data[f"{side}_bndbox"], *(size or (None, None)),
                                fix=ANNOTATION_FIX)
    if "viewpoint_variation" in data and data["viewpoint_variation"] not in VIEWPOINT_VARIATIONS:
        # the per-difficulty breakdown (items' ``viewpoint``) needs one of SPair's three levels
        fail(path, "viewpoint_variation", f"{data['viewpoint_variation']!r} is not one of 0, 1, 2", ANNOTATION_FIX)
    meta = {k: data[k] for k in ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "kps_ids",
                                 "mirror") if k in data}
    return SemanticPair(path.stem, root / "JPEGImages" / category / data["src_imname"],
                        root / "JPEGImages" / category / data["trg_imname"], category,
                        src_kps + PIXEL_OFFSET, trg_kps + PIXEL_OFFSET, valid, boxes["src"], boxes["trg"], meta)


def load_pairs(root: str | Path, split: str = "test", max_pairs: int | None = None,
               categories=None) -> ItemList:
    """The pairs of ``split`` (in the Layout list's order), optionally only those of ``categories`` (names as in
    the pair file names ``...:<category>.json``). A category filter that matches no pair raises
    :class:`corr3d.errors.UnknownNameError` listing the categories present; requested categories without pairs
    are in the result's ``skipped`` ``[(category, reason)]``. Every annotation is checked (keypoints inside their
    images, boxes non-empty and inside): a violation raises :class:`corr3d.errors.DatasetFormatError` naming the
    file and the field."""
    root = Path(root)
    files = pair_files(root, split)
    skipped = []
    if categories:
        present = sorted({pair_category(p) for p in files} - {""})
        chosen, skipped = apply_filter(present, categories, what="SPair category",
                                       source=root / "PairAnnotation" / split)
        files = [p for p in files if pair_category(p) in set(chosen)]
    if max_pairs is not None:
        files = files[:max_pairs]
    return ItemList((load_pair(root, p) for p in files), skipped)


def categories(root: str | Path) -> list[str]:
    jpeg = Path(root) / "JPEGImages"
    return sorted(p.name for p in jpeg.iterdir() if p.is_dir()) if jpeg.is_dir() else []


def data_present(root: str | Path, split: str = "test") -> bool:
    return (Path(root) / "PairAnnotation" / split).is_dir() and bool(pair_files(root, split))

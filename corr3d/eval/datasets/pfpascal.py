"""PF-PASCAL reader (CSV pair lists as shipped by 3DCorrEnhance / NCNet).

::

    <root>/                                  e.g. data/PF-dataset-PASCAL
        test_pairs_pf_different_views.csv    source_image,target_image,class,XA,YA,XB,YB
        test_pairs_pf_same_views.csv         (XA etc.: ';'-separated coordinates, 1-based MATLAB pixels)
        JPEGImages/<name>.jpg                (CSV paths such as PF-dataset-PASCAL/JPEGImages/x.jpg are relative
                                              to <root>/..)
        Annotations/<class>/<name>.mat       optional; ``bbox`` [x1 y1 x2 y2] for bbox-relative PCK
        class_names.txt                      optional; one name per class id (default: the 20 VOC classes)

Keypoints are converted to continuous pixel coordinates (1-based pixel index i -> i - 0.5). Negative (or NaN)
coordinates mark missing keypoints. Without an annotation file the target bounding box falls back to the extent of
its keypoints.

Checked on load (a violation raises ``DatasetFormatError`` naming the file, its line and the field): the four
coordinate lists of a row have the same length, both images exist, present keypoints lie inside their image (1 px
tolerance), annotation boxes are non-empty and inside the image.

Get the data: PF-PASCAL from https://www.di.ens.fr/willow/research/proposalflow/ (``PF-dataset-PASCAL``) and the two
pair lists from 3DCorrEnhance's ``data/`` folder (github.com/qq456cvb/3DCorrEnhance).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corr3d.errors import DatasetFormatError
from corr3d.utils.reading import check_box, check_points, describe, fail, image_size, reading
from corr3d.utils.report import write_text

PASCAL_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                  "tvmonitor"]
PIXEL_OFFSET = -0.5  # 1-based pixel index -> continuous
DOWNLOAD_HINT = ("PF-PASCAL: download PF-dataset-PASCAL from https://www.di.ens.fr/willow/research/proposalflow/ to "
                 "{path} and copy test_pairs_pf_different_views.csv / test_pairs_pf_same_views.csv from "
                 "github.com/qq456cvb/3DCorrEnhance (data/) into it")


@dataclass
class SemanticPair:
    """An image pair with corresponding keypoints (continuous px) for semantic correspondence."""

    pair_id: str
    src_path: Path
    trg_path: Path
    category: str
    src_kps: np.ndarray           # (N, 2)
    trg_kps: np.ndarray           # (N, 2)
    valid: np.ndarray             # (N,) bool
    src_bbox: np.ndarray | None = None   # (4,) x1 y1 x2 y2 continuous
    trg_bbox: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def class_names(root: Path) -> list[str]:
    names_file = root / "class_names.txt"
    if names_file.exists():
        return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    return list(PASCAL_CLASSES)


def _coords(text: str) -> np.ndarray:
    text = str(text).strip()
    return np.array([float(v) for v in text.split(";") if v.strip()], dtype=np.float64) if text else np.zeros(0)


def present_keypoints(kps: np.ndarray) -> np.ndarray:
    """Annotated keypoints: a negative or NaN coordinate marks a missing one (checked no further)."""
    return ~((kps < 0) | np.isnan(kps)).any(1)


def _resolve(root: Path, rel: str) -> Path | None:
    """The image a pair list names (relative to ``<root>/..``, ``<root>`` or ``JPEGImages/``); None when absent."""
    for cand in (root.parent / rel, root / rel, root / "JPEGImages" / Path(rel).name):
        if cand.is_file():
            return cand
    return None


def _image_size(path: Path, sizes: dict) -> tuple[int, int]:
    """(width, height) from the image header (cached per image: pairs share images)."""
    if path not in sizes:
        sizes[path] = image_size(path, "the image is truncated or not an image: copy PF-dataset-PASCAL again")
    return sizes[path]


def _mat_bbox(root: Path, category: str, image: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The ``bbox`` of ``Annotations/<class>/<name>.mat`` (1-based inclusive) in continuous coordinates, checked to
    be non-empty and inside the image; None without an annotation file."""
    ann = root / "Annotations" / category / f"{image.stem}.mat"
    if not ann.exists():
        return None
    from scipy.io import loadmat  # deferred: import cost (~0.2 s), only .mat files need it

    fix = "expected PF-PASCAL's Annotations/<class>/<image>.mat with bbox [x1 y1 x2 y2] (1-based); copy it again"
    try:
        data = loadmat(ann)
    except Exception as err:  # noqa: BLE001 - scipy raises MatReadError/ValueError/OSError for broken files
        raise DatasetFormatError(f"unreadable MATLAB annotation ({describe(err)})", path=ann, fix=fix) from None
    if "bbox" not in data:
        return None
    box = np.asarray(data["bbox"], dtype=np.float64).reshape(-1)
    if box.size < 4:
        fail(ann, "bbox", f"{box.size} values, expected [x1 y1 x2 y2]", fix)
    box = np.array([box[0] - 1.0, box[1] - 1.0, box[2], box[3]])  # 1-based inclusive -> continuous
    return check_box(ann, "bbox", box, *size, fix=fix)


def keypoint_bbox(kps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    pts = kps[valid] if valid.any() else kps
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def pairs_file(root: str | Path, views: str = "different", split: str = "test") -> Path:
    return Path(root) / f"{split}_pairs_pf_{views}_views.csv"


PAIRS_FIX = "expected the 3DCorrEnhance pair list (source_image,target_image,class,XA,YA,XB,YB); copy it again"
CONVENTION = " (PF-PASCAL coordinates are 1-based pixels; a negative or NaN coordinate marks a missing keypoint)"
KEYPOINTS_FIX = ("the pair list does not fit its images: use the 3DCorrEnhance pair lists with the original "
                 "PF-dataset-PASCAL JPEGImages (not resized), coordinates as 1-based pixels, -1 for a missing point")


def load_pairs(root: str | Path, views: str = "different", split: str = "test",
               max_pairs: int | None = None) -> list[SemanticPair]:
    """The pairs of one pair list. Every row is checked: same number of XA/YA/XB/YB coordinates, both images
    present, keypoints inside their images, annotation boxes non-empty and inside; a violation raises
    :class:`corr3d.errors.DatasetFormatError` naming the file, its line and the field."""
    root = Path(root)
    path = pairs_file(root, views, split)
    with reading(path, "PF-PASCAL pair list", PAIRS_FIX):
        return _load_pairs(root, path, views, class_names(root), max_pairs)


def _load_pairs(root: Path, path: Path, views: str, names: list[str], max_pairs: int | None) -> list[SemanticPair]:
    pairs, sizes, fix = [], {}, PAIRS_FIX
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().lower() not in ("source_image", "imagea", "source"):
            raise DatasetFormatError(f"unexpected header {header}", path=path, fix=fix)
        for i, row in enumerate(reader):
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
            if not row or not "".join(row).strip():
                continue
            line = f"line {reader.line_num}"
            try:  # a malformed row names its line (header = line 1) instead of an IndexError deep in eval
                if len(row) < 7:
                    raise ValueError(f"{len(row)} columns, expected 7")
                src, trg, cls = row[0], row[1], int(float(row[2]))
                if not 1 <= cls <= len(names):
                    raise ValueError(f"class id {cls} outside 1..{len(names)}")
                xa, ya, xb, yb = (_coords(v) for v in row[3:7])
            except ValueError as err:
                raise DatasetFormatError(f"{line}: {err}", path=path, fix=fix) from None
            counts = [len(xa), len(ya), len(xb), len(yb)]
            if len(set(counts)) != 1:
                fail(path, line, f"XA, YA, XB, YB hold {', '.join(map(str, counts))} coordinates; every keypoint "
                                 "needs all four", fix)
            if counts[0] == 0:
                fail(path, line, "no keypoints (XA, YA, XB, YB are empty)", fix)
            src_kps = np.stack([xa, ya], 1)
            trg_kps = np.stack([xb, yb], 1)
            src_present, trg_present = present_keypoints(src_kps), present_keypoints(trg_kps)
            valid = src_present & trg_present
            category = names[cls - 1]
            paths = []
            for side, rel in (("source", src), ("target", trg)):
                image = _resolve(root, rel)
                if image is None:
                    fail(path, line, f"{side} image {rel!r} not found (looked in {root.parent}, {root} and "
                                     f"{root / 'JPEGImages'})",
                         "put PF-dataset-PASCAL/JPEGImages next to the pair lists: " + DOWNLOAD_HINT.format(path=root))
                paths.append(image)
            src_path, trg_path = paths
            src_kps, trg_kps = src_kps + PIXEL_OFFSET, trg_kps + PIXEL_OFFSET
            src_size, trg_size = _image_size(src_path, sizes), _image_size(trg_path, sizes)
            for cols, kps, present, image, size in (("XA/YA", src_kps, src_present, src_path, src_size),
                                                    ("XB/YB", trg_kps, trg_present, trg_path, trg_size)):
                check_points(path, f"{line}: {cols} (keypoints on {image.name})", kps[present], *size,
                             fix=KEYPOINTS_FIX, convention=CONVENTION, file_offset=PIXEL_OFFSET)
            trg_bbox = _mat_bbox(root, category, trg_path, trg_size)
            src_bbox = _mat_bbox(root, category, src_path, src_size)
            meta = {"views": views, "bbox_source": "annotation" if trg_bbox is not None else "keypoints"}
            if trg_bbox is None:
                trg_bbox = keypoint_bbox(trg_kps, valid)
            if src_bbox is None:
                src_bbox = keypoint_bbox(src_kps, valid)
            pairs.append(SemanticPair(f"{views}:{i}", src_path, trg_path, category, src_kps, trg_kps, valid,
                                      src_bbox, trg_bbox, meta))
    return pairs


def data_present(root: str | Path) -> bool:
    root = Path(root)
    return any(pairs_file(root, v).exists() for v in ("different", "same"))


def write_pairs_csv(path: str | Path, rows: list[tuple[str, str, int, np.ndarray, np.ndarray]]) -> Path:
    """rows: (source rel path, target rel path, class id (1-based), src kps (N,2) continuous, trg kps) -> CSV."""
    lines = ["source_image,target_image,class,XA,YA,XB,YB"]
    for src, trg, cls, a, b in rows:
        a = np.asarray(a) - PIXEL_OFFSET
        b = np.asarray(b) - PIXEL_OFFSET
        fmt = lambda v: ";".join(f"{x:.3f}" for x in v)  # noqa: E731
        lines.append(f"{src},{trg},{cls},{fmt(a[:, 0])},{fmt(a[:, 1])},{fmt(b[:, 0])},{fmt(b[:, 1])}")
    return write_text(path, "\n".join(lines) + "\n")

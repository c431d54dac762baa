"""SPair-71k reader (the real layout).

::

    <root>/                                  e.g. data/SPair-71k
        PairAnnotation/<split>/<id>-<src>-<trg>:<category>.json
        JPEGImages/<category>/<name>.jpg
        Layout/large/<split>.txt             (optional pair list; default: every JSON of the split)

Pair JSON keys used: ``src_imname``, ``trg_imname``, ``category``, ``src_kps``, ``trg_kps`` ([[x, y], ...] 0-based
pixels), ``src_bndbox``, ``trg_bndbox`` ([x1, y1, x2, y2]), ``viewpoint_variation`` (0/1/2), ``scale_variation``,
``truncation``, ``occlusion``, ``kps_ids``. PCK@alpha uses alpha * max(bbox width, bbox height) of the target.
Keypoints become continuous coordinates (+0.5).

Get the data: http://cvlab.postech.ac.kr/research/SPair-71k/ (SPair-71k.tar.gz).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from corr3d.errors import DataFileError
from corr3d.eval.datasets.pfpascal import SemanticPair

PIXEL_OFFSET = 0.5
DOWNLOAD_HINT = ("SPair-71k: download http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz and "
                 "extract it so that {path}/PairAnnotation/test/*.json exists")


def pair_files(root: str | Path, split: str = "test") -> list[Path]:
    root = Path(root)
    layout = root / "Layout" / "large" / f"{split}.txt"
    ann_dir = root / "PairAnnotation" / split
    if layout.exists():
        names = [line.strip() for line in layout.read_text().splitlines() if line.strip()]
        return [ann_dir / f"{n}.json" for n in names]
    return sorted(ann_dir.glob("*.json"))


def load_pair(root: Path, path: Path) -> SemanticPair:
    try:
        return _load_pair(root, path)
    except (ValueError, KeyError, TypeError, IndexError) as err:  # json errors are ValueErrors
        raise DataFileError(f"malformed SPair pair annotation ({type(err).__name__}: {err})", path=path,
                            fix="expected SPair-71k's PairAnnotation JSON (src_imname, trg_imname, category, src_kps, "
                                "trg_kps, src_bndbox, trg_bndbox); extract the archive again") from None


def _load_pair(root: Path, path: Path) -> SemanticPair:
    data = json.loads(path.read_text())
    category = data["category"]
    src_kps = np.asarray(data["src_kps"], dtype=np.float64).reshape(-1, 2)
    trg_kps = np.asarray(data["trg_kps"], dtype=np.float64).reshape(-1, 2)
    n = min(len(src_kps), len(trg_kps))
    src_kps, trg_kps = src_kps[:n], trg_kps[:n]
    valid = (src_kps >= 0).all(1) & (trg_kps >= 0).all(1)
    meta = {k: data[k] for k in ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "kps_ids",
                                 "mirror") if k in data}
    return SemanticPair(path.stem, root / "JPEGImages" / category / data["src_imname"],
                        root / "JPEGImages" / category / data["trg_imname"], category,
                        src_kps + PIXEL_OFFSET, trg_kps + PIXEL_OFFSET, valid,
                        np.asarray(data["src_bndbox"], dtype=np.float64), np.asarray(data["trg_bndbox"], np.float64),
                        meta)


def load_pairs(root: str | Path, split: str = "test", max_pairs: int | None = None) -> list[SemanticPair]:
    root = Path(root)
    files = pair_files(root, split)
    if max_pairs is not None:
        files = files[:max_pairs]
    return [load_pair(root, p) for p in files]


def categories(root: str | Path) -> list[str]:
    jpeg = Path(root) / "JPEGImages"
    return sorted(p.name for p in jpeg.iterdir() if p.is_dir()) if jpeg.is_dir() else []


def data_present(root: str | Path, split: str = "test") -> bool:
    return (Path(root) / "PairAnnotation" / split).is_dir() and bool(pair_files(root, split))

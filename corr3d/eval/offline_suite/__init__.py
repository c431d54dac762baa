"""The offline benchmark suite: synthetic data written in each real dataset's on-disk format.

Generated deterministically from the procedural objects and the ray-casting renderer (no downloads), so that
``make eval`` and the tests run anywhere, through the same loaders that read the real datasets:

- ``<root>/onepose/``  OnePose-LowTexture layout (``lowtexture_test_data`` + ``sfm_output``) — :mod:`.onepose`;
- ``<root>/tapvid/tapvid_davis.pkl`` official TAP-Vid DAVIS pickle — :mod:`.tapvid`;
- ``<root>/semantic/PF-dataset-PASCAL`` and ``<root>/semantic/SPair-71k`` — :mod:`.semantic`;
- ``<root>/bop/ycbv/{test,models}`` BOP layout of YCB-Video (``pose_ycbv``) — :mod:`.bop`.

Each part is written to a temporary directory and renamed into place with a ``.complete`` marker holding the
generator version; :func:`ensure_offline_suite` regenerates parts that are missing or outdated.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Iterable

from corr3d.utils.io import replace_dir
from corr3d.utils.report import write_json

log = logging.getLogger(__name__)

SUITE_VERSION = 4   # 2: gentler, longer tracking videos; more pose objects/frames; camera effects
# 3: pose 10 objects with a hand-held test capture (aim, scale, roll); tracking 12 videos; semantic 6 categories x
#    40 PF-PASCAL / 24 SPair pairs
# 4: sized from v3's measured spread (issue 9): pose 12 objects x 30 query frames; tracking 18 videos; semantic
#    6 categories x 120 PF-PASCAL / 72 SPair pairs
PARTS = ("onepose", "tapvid", "semantic", "bop")
TASK_PARTS = {"pose": ("onepose",), "tracking": ("tapvid",), "semantic": ("semantic",),
              "pose_ycbv": ("bop",)}


def suite_paths(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {
        "onepose_data": root / "onepose" / "lowtexture_test_data",
        "onepose_sfm": root / "onepose" / "sfm_output" / "outputs_softmax_loftr_loftr",
        "tapvid": root / "tapvid" / "tapvid_davis.pkl",
        "pfpascal": root / "semantic" / "PF-dataset-PASCAL",
        "spair": root / "semantic" / "SPair-71k",
        "bop_ycbv_test": root / "bop" / "ycbv" / "test",
        "bop_ycbv_models": root / "bop" / "ycbv" / "models",
    }


def _marker(root: Path, part: str) -> Path:
    return root / part / ".complete"


def is_complete(root: str | Path, part: str) -> bool:
    marker = _marker(Path(root), part)
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("version") == SUITE_VERSION
    except (ValueError, OSError):
        return False


def generate_part(root: str | Path, part: str) -> Path:
    """(Re)generate one part atomically: build in ``<root>/.<part>.tmp``, then swap it in."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{part}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # deferred: load only the generator of the part being built (circular otherwise: the parts import this package)
    if part == "onepose":
        # deferred: pulls the training/evaluation stack only when used
        from corr3d.eval.offline_suite.onepose import generate
    elif part == "tapvid":
        # deferred: pulls the training/evaluation stack only when used
        from corr3d.eval.offline_suite.tapvid import generate
    elif part == "semantic":
        # deferred: pulls the training/evaluation stack only when used
        from corr3d.eval.offline_suite.semantic import generate
    elif part == "bop":
        # deferred: pulls the training/evaluation stack only when used
        from corr3d.eval.offline_suite.bop import generate
    else:
        raise ValueError(f"unknown suite part {part!r}; known: {PARTS}")
    info = generate(tmp)
    write_json(tmp / ".complete", {"version": SUITE_VERSION, **(info or {})})
    return replace_dir(tmp, root / part, old=root / f".{part}.old")


def ensure_offline_suite(root: str | Path, tasks: Iterable[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Generate the parts needed by ``tasks`` (default: all) that are missing; returns :func:`suite_paths`."""
    root = Path(root)
    parts: list[str] = []
    for task in (tasks if tasks is not None else TASK_PARTS):
        for part in TASK_PARTS.get(task, ()):
            if part not in parts:
                parts.append(part)
    for part in parts:
        if force or not is_complete(root, part):
            log.info("generating offline benchmark part %s in %s", part, root)
            print(f"[corr3d] generating offline benchmark suite part '{part}' in {root} ...", flush=True)
            generate_part(root, part)
    return suite_paths(root)

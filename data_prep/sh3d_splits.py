#!/usr/bin/env python
"""Draw the committed train / val / test / test_unseen_categories / untextured splits of the SweetHome3D objects.

Needs the Debian package ``sweethome3d-furniture`` (``apt-get install sweethome3d-furniture``). The drawing rule is
``corr3d.assets.sh3d.draw_splits`` (documented there and in docs/real_objects.md): deterministic, seed
``SPLIT_SEED``, catalog metadata only, so rerunning it rewrites identical files.

Examples:
  python data_prep/sh3d_splits.py                  # (re)write data_prep/splits/sh3d_*.txt
  python data_prep/sh3d_splits.py --verify         # exit 1 if the committed files differ from a fresh draw
  python data_prep/sh3d_splits.py --table          # the per-class count table of docs/real_objects.md
  python data_prep/sh3d_splits.py --check-meshes   # load every eligible model: unreadable / degenerate ones and
                                                   # orientation mismatches (candidates for sh3d.DEGENERATE)
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from corr3d.assets import sh3d  # noqa: E402
from corr3d.utils.io import atomic_write_text  # noqa: E402

PURPOSE = {
    "train": "training objects (textured)",
    "val": "validation objects (textured; classes also in train, instances not)",
    "test": "held-out test objects (textured; classes also in train, instances not)",
    "test_unseen_categories": "held-out test objects of classes that are in no other textured split",
    "untextured": "shape-only control: models with flat material colours only, never in train",
}


def split_text(name: str, specs: list[str], entries: dict[str, sh3d.Sh3dEntry]) -> str:
    classes = collections.Counter(sh3d.object_class(entries[s]) for s in specs)
    header = [
        f"# sh3d split '{name}': {PURPOSE[name]}.",
        f"# {len(specs)} objects, {len(classes)} object classes: "
        + ", ".join(f"{c} {n}" for c, n in sorted(classes.items())) + ".",
        f"# Drawn by data_prep/sh3d_splits.py = corr3d.assets.sh3d.draw_splits(seed={sh3d.SPLIT_SEED}) from the "
        f"catalogs of the Debian package {sh3d.DEBIAN_PACKAGE} 1.8",
        "# (numpy default_rng over specs sorted by name; classes from sh3d.CLASS_RULES; see docs/real_objects.md).",
        "# Do not edit by hand: rerun the script. Columns: spec<TAB>object class<TAB>catalog name<TAB>licence.",
    ]
    rows = [f"{s}\t{sh3d.object_class(entries[s])}\t{entries[s].name}\t{entries[s].licence}" for s in specs]
    return "\n".join(header + rows) + "\n"


def class_table(splits: dict[str, list[str]], entries: dict[str, sh3d.Sh3dEntry]) -> str:
    """Markdown: objects per object class and split, plus totals."""
    counts = {name: collections.Counter(sh3d.object_class(entries[s]) for s in specs)
              for name, specs in splits.items()}
    classes = sorted(set().union(*counts.values()))
    names = list(splits)
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(str(counts[n][c] or "") for n in names) + " |")
    lines.append("| **objects** | " + " | ".join(f"**{len(splits[n])}**" for n in names) + " |")
    lines.append("| **classes** | " + " | ".join(f"**{len(counts[n])}**" for n in names) + " |")
    return "\n".join(lines)


def check_meshes(entries: list[sh3d.Sh3dEntry], tolerance: float = 0.1) -> dict[str, str]:
    """Load every entry (normalised like ``load_object``); spec -> problem for unreadable, empty or non-finite
    meshes, textured entries that load without a texture image, and extents that disagree with the catalog's
    width/height/depth by more than ``tolerance`` (of the largest). All but "footprint only" problems (the
    catalog's width/depth differ, the height agrees) belong in ``sh3d.DEGENERATE``."""
    import numpy as np

    from corr3d.assets.meshes import MeshLoadError, normalize_mesh

    problems = {}
    for k, item in enumerate(entries):
        try:
            mesh = normalize_mesh(sh3d.load_sh3d(item.spec))
        except MeshLoadError as err:
            problems[item.spec] = f"unreadable: {err}"
            continue
        if not np.isfinite(mesh.vertices).all():
            problems[item.spec] = "non-finite vertices"
            continue
        width, depth, height = item.size_cm
        expected = np.array([width, height, depth]) / max(item.size_cm)
        got = mesh.extents / mesh.extents.max()
        if np.abs(expected - got).max() > tolerance:  # "up axis" ones go to DEGENERATE, "footprint" ones are kept
            kind = "up axis" if abs(expected[1] - got[1]) > tolerance else "footprint only"
            problems[item.spec] = f"{kind}: extents x,y,z {np.round(got, 2).tolist()} vs catalog w,h,d " \
                                  f"{np.round(expected, 2).tolist()}"
        image = getattr(getattr(mesh.visual, "material", None), "image", None)
        if item.textured and image is None and getattr(mesh.visual, "kind", None) != "texture":
            problems[item.spec] = "textured in the catalog but loads without a texture"
        print(f"[{k + 1}/{len(entries)}] {item.spec}: {problems.get(item.spec, 'ok')}", file=sys.stderr, flush=True)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(sh3d.SPLITS_DIR))
    parser.add_argument("--seed", type=int, default=sh3d.SPLIT_SEED)
    parser.add_argument("--verify", action="store_true", help="compare with the files instead of writing them")
    parser.add_argument("--table", action="store_true", help="print the per-class table (Markdown)")
    parser.add_argument("--check-meshes", action="store_true", help="load every eligible model and report problems")
    args = parser.parse_args(argv)
    entries = sh3d.entries_by_spec()
    if args.check_meshes:
        candidates = [e for e in entries.values() if sh3d.eligible(e)]
        problems = check_meshes(candidates)
        print("{\n" + "".join(f"    {s!r}: {why!r},\n" for s, why in sorted(problems.items())) + "}")
        return 0
    splits = sh3d.draw_splits(entries.values(), seed=args.seed)
    if args.table:
        print(class_table(splits, entries))
        return 0
    differ = []
    for name, specs in splits.items():
        path = sh3d.split_path(name, args.out_dir)
        if args.verify:
            if not path.is_file() or sh3d.load_split(name, args.out_dir) != specs:
                differ.append(str(path))
        else:
            atomic_write_text(path, split_text(name, specs, entries))
        print(f"{name}: {len(specs)} objects, "
              f"{len({sh3d.object_class(entries[s]) for s in specs})} classes -> {path}")
    if differ:
        print("differ from a fresh draw: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

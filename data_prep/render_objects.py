"""Render many objects (42 icosphere views each) in parallel processes, resumable, with a manifest.

Examples:
  python data_prep/render_objects.py --procedural --out data/rendered
  python data_prep/render_objects.py --mesh-dir ~/.objaverse/hf-objaverse-v1/glbs --out data/rendered --workers 2
  python data_prep/render_objects.py procedural:hemisphere objaverse:<uid> model.glb --set width=256 height=256

Re-running the same command skips finished objects; see corr3d/render/batch.py for the atomicity guarantees and
corr3d/render/store.py for the output format.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corr3d.assets.meshes import MESH_SUFFIXES
from corr3d.assets.objects import PROCEDURAL_OBJECTS, procedural_split
from corr3d.render.batch import render_batch


def collect_specs(args: argparse.Namespace) -> list[str]:
    specs = list(args.specs)
    if args.list:
        lines = Path(args.list).read_text().splitlines()
        specs += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if args.procedural:
        names = {"all": PROCEDURAL_OBJECTS, "train": procedural_split()[0], "eval": procedural_split()[1]}
        specs += [f"procedural:{n}" for n in names[args.procedural]]
    if args.mesh_dir:
        specs += sorted(str(p) for p in Path(args.mesh_dir).expanduser().rglob("*")
                        if p.suffix.lower() in MESH_SUFFIXES)
    return specs


def render_config(args: argparse.Namespace):
    """``data.render`` of the base config (or ``--experiment``) with ``--set key=value`` overrides."""
    from corr3d.config import load_config

    overrides = [f"data.render.{kv}" for kv in args.set]
    return load_config(args.experiment, overrides).data.render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", help="object specs: procedural:<name>[:seed], objaverse:<uid>, mesh path")
    parser.add_argument("--list", help="text file with one spec per line")
    parser.add_argument("--procedural", nargs="?", const="all", choices=("all", "train", "eval"),
                        help="add the procedural library (or its train / held-out eval split)")
    parser.add_argument("--mesh-dir", help="add every mesh file (glb/gltf/obj/ply/...) below this directory")
    parser.add_argument("--out", default="data/rendered", help="output root (one directory per object)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: data.render.workers)")
    parser.add_argument("--experiment", default="base", help="experiment whose data.render settings to use")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="data.render overrides, e.g. width=256 height=256 focal=280")
    parser.add_argument("--no-retry-failed", action="store_true", help="skip objects that failed before")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    specs = collect_specs(args)
    if not specs:
        parser.error("no objects given (specs, --list, --procedural or --mesh-dir)")
    entries = render_batch(specs, args.out, render_config(args), workers=args.workers, progress=not args.quiet,
                           retry_failed=not args.no_retry_failed)
    failed = {s: e.get("error") for s, e in entries.items() if e["status"] != "done"}
    print(f"{len(entries) - len(failed)}/{len(specs)} objects rendered under {args.out}")
    for spec, error in list(failed.items())[:20]:
        print(f"  failed: {spec}: {error}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (every failure with its error: {args.out}/manifest.json)")
    # a batch with failures is not a success: scripts and array jobs must see it (the others are rendered and kept)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

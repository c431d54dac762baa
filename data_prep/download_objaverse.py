#!/usr/bin/env python
"""Download (or reuse from the objaverse cache) Objaverse GLBs and write an object list for corr3d.

Examples:
  python data_prep/download_objaverse.py --uids-file 10k.txt --processes 8 --out data/objaverse_10k.txt
  python data_prep/download_objaverse.py --lvis chair mug --count 200 --out data/objaverse_lvis.txt
  python data_prep/download_objaverse.py --count 1000 --seed 0 --out data/objaverse_1k.txt

``--count`` with ``--uids-file`` takes the FIRST N of that list: to evaluate on objects the training never saw,
write a held-out list with data_prep/make_heldout_list.py (or pass ``--exclude <training list>`` here).

The list has lines ``objaverse:<uid><TAB><path>``; use it with ``data.object_list=<file>`` (then
``make render`` renders it) or feed the specs to ``data_prep/render_objects.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from corr3d.assets.objaverse import fetch_objaverse, set_cache_dir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uids-file", help="text file of uids (uid, uid.glb or 000-xxx/uid per line)")
    parser.add_argument("--lvis", nargs="*", default=[], metavar="CATEGORY", help="Objaverse-LVIS categories")
    parser.add_argument("--count", type=int, help="number of objects (seeded random subset; list files: first N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE",
                        help="uid file / object list whose objects must not be selected (e.g. the training list)")
    parser.add_argument("--processes", type=int, default=4, help="parallel download processes")
    parser.add_argument("--out", default="data/objaverse_objects.txt", help="object list to write")
    parser.add_argument("--cache-dir", help="objaverse cache (the hf-objaverse-v1 folder); default: the package's")
    parser.add_argument("--no-metadata", action="store_true", help="skip the <out>.meta.json names/licences file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cache_dir:
        set_cache_dir(args.cache_dir)
    from corr3d.assets.objaverse import read_uid_file

    exclude = [u for f in args.exclude for u in read_uid_file(f)]
    summary = fetch_objaverse(uid_file=args.uids_file, lvis_categories=args.lvis, count=args.count, seed=args.seed,
                              processes=args.processes, out=args.out, with_metadata=not args.no_metadata,
                              exclude=exclude)
    print(json.dumps({k: (v if k != "missing" else v[:20]) for k, v in summary.items()}, indent=1))
    if summary["missing"]:
        print(f"{len(summary['missing'])} uids are not in Objaverse and were skipped", file=sys.stderr)
    return 0 if summary["available"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Write a held-out Objaverse evaluation list that shares no object with a training list.

Examples:
  # 1,000 evaluation objects from all of Objaverse, none of them in the authors' 10k training subset
  python data_prep/make_heldout_list.py --uids-file data/10k.txt --count 1000 --seed 0 \\
      --out data/objaverse_heldout_1k.txt
  # held out from a corr3d training list, drawn from Objaverse-LVIS categories, and downloaded
  python data_prep/make_heldout_list.py --train-list data/objaverse_10k.txt --lvis mug chair --count 200 --download

``--uids-file`` / ``--train-list`` (repeatable) are the TRAINING lists to exclude: the authors' ``000-xxx/<uid>``
lines, bare uids, ``uid.glb`` or corr3d lists (``objaverse:<uid><TAB><path>``). Candidates are ``--candidates``
(a uid file), ``--lvis`` categories, or else every Objaverse uid (the objaverse package's index). The selection is
a seeded sample of the sorted candidates, so it is reproducible and independent of list order. The output has one
``objaverse:<uid>`` spec per line (with ``--download``: ``objaverse:<uid><TAB><glb>``), ready for
``equivariance.object_list=<out>``; training and ``make eval`` refuse to start when the lists overlap
(``corr3d.assets.objaverse.check_experiment_disjoint``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from corr3d.assets.objaverse import (  # noqa: E402
    SPEC_PREFIX,
    check_disjoint,
    fetch_objaverse,
    read_uid_file,
    select_uids,
    set_cache_dir,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uids-file", action="append", default=[], metavar="FILE",
                        help="training uids to exclude (authors' 10k.txt format 000-xxx/<uid>, or bare uids)")
    parser.add_argument("--train-list", action="append", default=[], metavar="FILE",
                        help="corr3d object list(s) used for training (objaverse:<uid>[<TAB>path] lines)")
    parser.add_argument("--candidates", help="uid file to draw from (default: --lvis, else all of Objaverse)")
    parser.add_argument("--lvis", nargs="*", default=[], metavar="CATEGORY", help="draw from Objaverse-LVIS categories")
    parser.add_argument("--count", type=int, required=True, help="number of held-out objects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/objaverse_heldout.txt")
    parser.add_argument("--download", action="store_true", help="also download the GLBs and write their paths")
    parser.add_argument("--processes", type=int, default=4, help="parallel downloads (with --download)")
    parser.add_argument("--cache-dir", help="objaverse cache (the hf-objaverse-v1 folder)")
    return parser.parse_args(argv)


def heldout_uids(train: list[str], count: int, seed: int = 0, candidates_file=None, lvis=()) -> list[str]:
    """``count`` uids not in ``train``, a seeded sample of the sorted candidates (all of them if fewer remain)."""
    import random

    uids = select_uids(candidates_file, lvis, None, seed, exclude=train)
    uids = sorted(uids)
    return uids if count >= len(uids) else sorted(random.Random(seed).sample(uids, count))


def main(argv=None) -> int:
    from corr3d.assets.objaverse import read_object_list
    from corr3d.utils.run_dir import atomic_write_text

    args = parse_args(argv)
    if args.cache_dir:
        set_cache_dir(args.cache_dir)
    if not (args.uids_file or args.train_list):
        print("give the training list(s) to hold out from: --uids-file and/or --train-list", file=sys.stderr)
        return 2
    train = [u for f in args.uids_file for u in read_uid_file(f)]
    train += [s for f in args.train_list for s in read_object_list(f)]
    uids = heldout_uids(train, args.count, args.seed, args.candidates, args.lvis)
    check_disjoint(train, uids, "training", "held-out")   # by construction; guards against key mismatches
    out = Path(args.out)
    if args.download:
        tmp = out.with_name(f".{out.name}.uids")
        atomic_write_text(tmp, "".join(f"{u}\n" for u in uids))
        summary = fetch_objaverse(uid_file=tmp, processes=args.processes, out=out)
        tmp.unlink()
        summary["missing"] = summary["missing"][:20]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(f"{SPEC_PREFIX}{u}\n" for u in uids))
        summary = {"requested": args.count, "written": len(uids), "list": str(out)}
    summary["excluded_training_objects"] = len(set(train))
    print(json.dumps(summary, indent=1))
    return 0 if uids else 1


if __name__ == "__main__":
    sys.exit(main())

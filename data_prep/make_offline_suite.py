"""Generate the synthetic offline benchmark suite (OnePose, TAP-Vid DAVIS, PF-PASCAL and SPair-71k formats).

    python data_prep/make_offline_suite.py [--root data/benchmarks] [--parts onepose,tapvid,semantic] [--force]

``make eval`` does this on demand; run it by hand to inspect or refresh the data.
"""
from __future__ import annotations

import argparse

from corr3d.eval.offline_suite import PARTS, generate_part, is_complete, suite_paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/benchmarks")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if args.force or not is_complete(args.root, part):
            print(f"generating {part} ...", flush=True)
            generate_part(args.root, part)
        else:
            print(f"{part}: complete")
    for name, path in suite_paths(args.root).items():
        print(f"  {name:14s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

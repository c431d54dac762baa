"""``make bench``: each module in this package measures one area and returns a flat dict of numbers.

Modules expose ``run(quick: bool) -> dict[str, float | str]``; results are printed as a table and written to JSON.
"""
from __future__ import annotations

import importlib
import pkgutil
import time

import torch

from corr3d.utils.io import write_json


def benchmark_groups() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run_benchmarks(only: str | None = None, quick: bool = False, out: str = "runs/bench.json") -> dict:
    groups = benchmark_groups() if not only else [g.strip() for g in only.split(",")]
    results: dict[str, dict] = {"_machine": {"torch_threads": torch.get_num_threads(),
                                            "cuda": torch.cuda.is_available()}}
    for group in groups:
        module = importlib.import_module(f"corr3d.perf.{group}")
        start = time.perf_counter()
        numbers = module.run(quick=quick)
        numbers["bench_wall_s"] = round(time.perf_counter() - start, 2)
        results[group] = numbers
        print(f"\n== {group} ==")
        for key, value in numbers.items():
            print(f"  {key:<48} {value}")
    path = write_json(out, results)
    print(f"\nwrote {path}")
    return results

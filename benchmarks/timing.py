"""Shared helpers for the benchmarks: timing with spread, machine description, result files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from typing import Callable, Dict, List

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> str:
    return f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU"


def time_call(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> Dict[str, float]:
    """Median, min and max wall seconds of `fn()` (its result is forced with .numpy() if possible)."""

    def run():
        result = fn()
        for leaf in result if isinstance(result, (tuple, list)) else [result]:
            getattr(leaf, "numpy", lambda: None)()

    for _ in range(warmup):
        run()
    samples: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def write_results(name: str, rows: List[dict], table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text(f"Machine: {machine()}\n\n{table}\n")
    print(f"\n{table}\n\nwrote {RESULTS / (name + '.md')}")

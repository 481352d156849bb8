"""Shared helpers for the benchmarks: timing with spread, peak memory, machine description, result files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository root: `python -m benchmarks.NAME` runs from here
RESULTS = ROOT / "benchmarks" / "results"
#: Prose written below this line of a results .md survives re-runs of its benchmark.
PROSE_MARKER = "<!-- prose: kept across re-runs -->"


def machine() -> str:
    return f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU"


# -- memory: the process's peak resident set (Linux VmHWM), which Linux lets us reset --------
def reset_peak_memory() -> bool:
    """Resets VmHWM to the current resident size (clear_refs = 5); False where that is not
    possible (not Linux), and VmHWM is then the process's high-water mark."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process, in MB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # pylint: disable=import-outside-toplevel

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(fn: Callable[[], object]) -> Tuple[object, float, Optional[float]]:
    """(fn(), wall seconds, peak RSS increase in MB over the RSS before the call, or None where
    the peak cannot be reset)."""
    can_reset = reset_peak_memory()
    before = memory_mb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM") - before if can_reset else None
    return result, seconds, peak


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


def optional(value, spec: str) -> str:
    """`value` formatted with `spec`, or an em dash where it was not measured (None)."""
    return "—" if value is None else format(value, spec)


def run_worker(module: str, spec: dict, timeout: float, env: Optional[Dict[str, str]] = None) -> dict:
    """Runs `python -m <module> --worker <spec as JSON>` (e.g. `benchmarks.num_codewords`) in a
    fresh process from the repository root and returns the dict it printed on a `RESULT <json>`
    line (a list for some workers), or `spec` with a `skipped` reason."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "skipped": f"over the {timeout:.0f} s limit per configuration"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {**spec, "skipped": f"failed (exit {done.returncode}): {tail[0][:200]}"}


def write_markdown_keeping_prose(md_path: pathlib.Path, markdown: str) -> None:
    """Writes `markdown`, then the prose that followed `PROSE_MARKER` in the previous file (or
    the marker alone), so hand-written notes survive a re-run."""
    prose = ""
    if md_path.exists():
        old = md_path.read_text()
        if PROSE_MARKER in old:
            prose = old[old.index(PROSE_MARKER) :]
    md_path.write_text(markdown + "\n\n" + (prose or PROSE_MARKER + "\n"))

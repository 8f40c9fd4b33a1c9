"""Run one learning test N times under the CI thread share and print the spread of its figures.

A learning test trains a small model and asserts that a figure (top-1, box AP50, ...) clears a
bound. Training is deterministic for a given seed, process count and thread setting, so a
test's outcome is fixed per seed; the bound must hold for seeds it was not tuned on (and for
the other floating-point orders another CPU's kernels give). This tool measures the spread the
bound is set from:

    python tools/learning_spread.py tests/training/test_digits.py::test_digits_learns_and_exports
    python tools/learning_spread.py TEST --runs 10 --same-seed     # determinism: one value

Each run is a fresh `pytest` process with `RES2NET_LEARNING_SEED` set (the `learning_seed`
fixture in tests/conftest.py reads it) and TensorFlow given CI's thread share (cores divided
by `--jobs`, the number of runs side by side, 2 as CI's two pytest-xdist workers). Tests
report their figures and bounds through `record_property("figure:NAME", value)` and
`record_property("bound:NAME", value)`; the tool reads them from pytest's JUnit XML. It
prints one line per run and a summary per figure (min, median, mean, sd, max, the bound and
the margin), and records all of it, with the command, versions, machine and load, in
`benchmarks/results/learning_spread.json` under the test's id.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "learning_spread.json"
SEED_VARIABLE = "RES2NET_LEARNING_SEED"


def run_once(test: str, seed: int, threads: int) -> dict:
    """One pytest process of `test` with `seed`; its outcome, figures and bounds."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.xml"
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
        env[SEED_VARIABLE] = str(seed)
        env.pop("PYTEST_XDIST_WORKER_COUNT", None)
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             f"--junitxml={report}", test], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        figures, bounds = {}, {}
        if report.exists():
            for prop in ElementTree.parse(report).iter("property"):
                kind, _, name = prop.get("name", "").partition(":")
                target = {"figure": figures, "bound": bounds}.get(kind)
                if target is not None:
                    target[name] = float(prop.get("value"))
    tail = completed.stdout.strip().splitlines()[-1:] if completed.stdout.strip() else []
    return dict(seed=seed, passed=completed.returncode == 0, seconds=round(seconds, 1),
                figures=figures, bounds=bounds, outcome=tail[0] if tail else "")


def summarise(runs: list[dict]) -> dict:
    """Per figure: count, min, median, mean, sd, max, bound and margins."""
    names = dict.fromkeys(name for run in runs for name in run["figures"])
    summary = {}
    for name in names:
        values = [run["figures"][name] for run in runs if name in run["figures"]]
        bounds = {run["bounds"][name] for run in runs if name in run["bounds"]}
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        entry = dict(count=len(values), min=min(values), median=statistics.median(values),
                     mean=mean, sd=sd, max=max(values))
        if len(bounds) == 1:
            bound = bounds.pop()
            entry.update(bound=bound, margin=min(values) - bound,
                         sds_above_bound=(mean - bound) / sd if sd else None)
        summary[name] = entry
    return summary


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version())


def versions() -> dict:
    found = {}
    for package in ("tensorflow", "keras", "numpy"):
        try:
            from importlib.metadata import version

            found[package] = version(package)
        except Exception:  # noqa: BLE001 (a missing package is simply not listed)
            continue
    return found


def record(test: str, entry: dict) -> None:
    """Merge `entry` into the results file under `test` (written through a temporary)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[test] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_suffix(".json.partial")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    temporary.replace(RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", help="a pytest node id, e.g. tests/training/test_digits.py")
    parser.add_argument("--runs", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first run")
    parser.add_argument("--same-seed", action="store_true",
                        help="every run with --first-seed (shows determinism: one value)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs side by side (default 2, CI's pytest-xdist workers); "
                             "each gets cores/jobs TensorFlow threads")
    parser.add_argument("--no-record", action="store_true",
                        help=f"print only; do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.jobs < 1:
        parser.error("--runs and --jobs must be >= 1")
    node = args.test.split("::", 1)[0]
    if not (ROOT / node).is_file():
        print(f"learning_spread: {args.test}: no such test file {node}", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    seeds = [args.first_seed + (0 if args.same_seed else i) for i in range(args.runs)]
    load_before = os.getloadavg()[0]
    print(f"{args.test}: {args.runs} runs, {args.jobs} at a time, {threads} TensorFlow "
          f"thread(s) each, load {load_before:.2f}", flush=True)
    runs = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_once, args.test, seed, threads) for seed in seeds]
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs.append(run)
            figures = "  ".join(f"{k} {v:.4f}" for k, v in run["figures"].items())
            print(f"  [{len(runs)}/{args.runs}] seed {run['seed']}: "
                  f"{'passed' if run['passed'] else 'FAILED'}  {figures}  "
                  f"({run['seconds']:.0f} s)", flush=True)
    runs.sort(key=lambda run: run["seed"])
    summary = summarise(runs)
    for name, s in summary.items():
        line = (f"{name}: min {s['min']:.4f}  median {s['median']:.4f}  mean {s['mean']:.4f}  "
                f"sd {s['sd']:.4f}  max {s['max']:.4f}")
        if "bound" in s:
            above = s["sds_above_bound"]
            line += (f"  bound {s['bound']:.4f}  margin {s['margin']:+.4f}"
                     + (f" ({above:.1f} sd from the mean)" if above is not None else ""))
        print(line)
    failed = sum(not run["passed"] for run in runs)
    print(f"{len(runs) - failed} passed, {failed} failed")
    if not args.no_record:
        record(args.test, dict(
            command=" ".join([Path(sys.executable).name, *sys.argv]), runs=runs,
            summary=summary, same_seed=args.same_seed, jobs=args.jobs, threads=threads,
            load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2),
            date=time.strftime("%Y-%m-%d"), machine=machine(), versions=versions()))
        print(f"recorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

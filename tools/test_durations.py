"""Write tests/durations.json, the per-file seconds that order the test run, from a JUnit XML.

`make test` hands whole test files to its pytest-xdist workers in collection order
(`--dist loadfile --no-loadscope-reorder`); tests/conftest.py starts the files that take
longest first (the longest-processing-time rule), so that no long file starts last and runs
alone at the end. Their seconds come from a real run, never typed in by hand:

    make durations       # runs the suite with --junitxml, then this script

or, from a JUnit XML of any full run:

    python tools/test_durations.py report.xml

Every file of the run is written with its summed test time (setup and teardown included, as
pytest's JUnit XML counts them), longest first.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = ROOT / "tests" / "durations.json"


def file_seconds(report: Path) -> dict[str, float]:
    """Summed seconds per test file (relative to tests/) in a pytest JUnit XML report."""
    totals: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(report).iter("testcase"):
        # classname is the dotted module path under the rootdir: tests.detection.test_htc
        # (importlib mode) or detection.test_htc; the file is what loadfile schedules.
        parts = case.get("classname", "").split(".")
        if parts and parts[0] == "tests":
            parts = parts[1:]
        modules = [i for i, part in enumerate(parts) if part.startswith("test_")]
        if not modules:
            continue
        relative = "/".join(parts[:modules[0] + 1]) + ".py"
        totals[relative] += float(case.get("time", 0.0))
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="pytest --junitxml output of a full run")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"test_durations: {args.report}: no such file", file=sys.stderr)
        return 2
    try:
        seconds = file_seconds(args.report)
    except ElementTree.ParseError as err:
        print(f"test_durations: {args.report}: not a JUnit XML report ({err})", file=sys.stderr)
        return 2
    if not seconds:
        print(f"test_durations: {args.report}: no test cases in it", file=sys.stderr)
        return 2
    ordered = dict(sorted(((name, round(value, 1)) for name, value in seconds.items()),
                          key=lambda item: (-item[1], item[0])))
    temporary = DURATIONS.with_suffix(".json.partial")
    temporary.write_text(json.dumps(ordered, indent=1) + "\n")
    temporary.replace(DURATIONS)
    print(f"{DURATIONS.relative_to(ROOT)}: {len(ordered)} files, "
          f"{sum(ordered.values()):.0f} test-seconds in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

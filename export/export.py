"""Thin entry point: `python export/export.py --model ... --format ...` (same as `res2net-export`).

The logic lives in `keras_res2net.export`; this script only hands over the command line.
"""

from keras_res2net.export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

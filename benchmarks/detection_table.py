"""Every detector on the generated shapes dataset, side by side: box and mask AP50 / AP75.

    python benchmarks/detection_table.py                       # all six, 50 min on 2 busy cores
    python benchmarks/detection_table.py --experiments cascade_mask_rcnn htc_without_semantic

Writes the dataset once (600 train / 100 val images at 128x128, with semantic label maps for
HTC's semantic branch), trains each `<name>_res2net50_fpn_synthetic` experiment with the same
data, steps and seed, evaluates it on the val split with pycocotools and prints one table.
Cascades are expected to gain most at AP75 (stricter IoU), Mask R-CNN's AP50 is the bar.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data.synthetic import write_dataset

DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn",
             "htc_without_semantic", "htc")


def run_one(name: str, data_dir: Path, work_dir: Path, steps: int | None) -> dict:
    """Train and evaluate `<name>_res2net50_fpn_synthetic`; its row of the table."""
    experiment = f"{name}_res2net50_fpn_synthetic"
    config = configs.get_experiment(experiment)
    if steps:
        scale = steps / config.train.steps
        config.train.steps = steps
        config.train.decay_steps = tuple(int(s * scale) for s in config.train.decay_steps)
    start = time.time()
    task, model, seconds_per_step = trainer.train(config, data_dir, work_dir / name)
    metrics = trainer.evaluate(task, model, data_dir, verbose=False)
    row = {"detector": name, "steps": config.train.steps,
           "s_per_step": round(seconds_per_step, 3), "minutes": round((time.time() - start)
                                                                       / 60, 1)}
    for kind in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            row[f"{kind}_{key}"] = round(metrics[kind][key], 3) if kind in metrics else None
    print(json.dumps(row), flush=True)
    return row


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows (a dash where a detector has no masks)."""
    head = ("| detector | box AP50 | box AP75 | box AP | mask AP50 | mask AP75 | mask AP | "
            "s/step |")
    lines = [head, "|---" * 8 + "|"]
    for row in rows:
        cells = [row["detector"]] + [
            "-" if row[key] is None else f"{row[key]:.3f}"
            for key in ("bbox_AP50", "bbox_AP75", "bbox_AP", "segm_AP50", "segm_AP75",
                        "segm_AP")] + [f"{row['s_per_step']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(DETECTORS),
                        choices=DETECTORS)
    parser.add_argument("--steps", type=int, default=None,
                        help="Training steps for every detector (default: the experiments' "
                             "own 300); the decay steps scale with it.")
    parser.add_argument("--work_dir", default=None,
                        help="Where data and runs go (default: a temporary folder).")
    args = parser.parse_args()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="detection_table_"))
    # Semantic label maps only when HTC's semantic branch is in the table.
    extra = {"semantic": True} if "htc" in args.experiments else {}
    data_dir = write_dataset(work_dir / "shapes", seed=0, **extra)
    rows = [run_one(name, data_dir, work_dir, args.steps) for name in args.experiments]
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()

"""The paper's salient-object comparison on generated scenes: DSS on Res2Net-50 against the
same DSS on ResNet-50, each trained on the same budget, measured on a held-out seed.

    flock /work/locks/heavy python benchmarks/saliency.py [--steps 320] [--out FILE]

Res2Net-50 is the published 26w x 4s (3-4-6-3 blocks, v1 stem); ResNet-50 is the project's
v1 trunk with scale 1 and width 64 (the same bottleneck as keras.applications' ResNet50,
25,557,032 parameters as PyTorch counts them). Both carry the same DSS decoder
(`keras_res2net.saliency.model`; side widths `--side_channels`), train from random weights
(nothing is downloaded) with the same recipe, seed and scenes (`train/saliency.py`'s
`--data synthetic`), one after the other in this process with every CPU core, and are
evaluated on scenes of a held-out seed with the field's metrics (pysodmetrics: MAE, max and
mean F-measure, S-measure, E-measure). The issue's targets for Res2Net-50: MAE <= 0.05 and
max F >= 0.90 within 15 minutes of training on 2 cores; each run's wall time and the load
average before and after it are recorded. Writes benchmarks/results/saliency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# keras_res2net before keras and TensorFlow: it quiets TensorFlow's start-up for scripts.
from keras_res2net.saliency import config as config_lib  # noqa: E402
from keras_res2net.saliency import task  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BACKBONES = {  # name -> the variant and knobs of its trunk
    "Res2Net-50 (26w x 4s)": dict(model="res2net50_26w_4s", layers=(3, 4, 6, 3),
                                  base_width=26, scale=4),
    "ResNet-50 (v1 trunk, scale 1)": dict(model="res2net50_26w_4s", layers=(3, 4, 6, 3),
                                          base_width=64, scale=1),
}
TARGETS = {"MAE": 0.05, "maxF": 0.90, "minutes": 15.0}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


def main() -> int:
    import keras
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=320, help="training steps of each run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--side_channels", default="32,64,64,128,128",
                        help="DSS side widths (DSS: 128,256,256,512,512)")
    parser.add_argument("--num_train", type=int, default=2048)
    parser.add_argument("--num_val", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--iou_weight", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5, help="evaluations along the run")
    parser.add_argument("--only", choices=sorted(BACKBONES), help="run one backbone")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "saliency.json"))
    args = parser.parse_args()
    side_channels = tuple(int(v) for v in args.side_channels.split(","))
    runs = {}
    for name, knobs in BACKBONES.items():
        if args.only and name != args.only:
            continue
        folder = tempfile.mkdtemp(prefix="saliency-bench-")
        config = config_lib.resolve(config_lib.SaliencyConfig(
            **knobs, side_channels=side_channels, image_size=args.image_size,
            num_train=args.num_train, num_val=args.num_val, batch_size=args.batch_size,
            epochs=args.epochs, steps_per_epoch=args.steps // args.epochs,
            learning_rate=args.learning_rate, iou_weight=args.iou_weight, seed=args.seed,
            model_dir=folder))
        print(f"== {name}", flush=True)
        before = uptime()
        start = time.perf_counter()
        trainer = task.SaliencyTrainer(config)  # scenes generated here, before the clock
        setup = time.perf_counter() - start
        start = time.perf_counter()
        metrics = trainer.train()
        seconds = time.perf_counter() - start
        history = trainer.history
        runs[name] = {
            "config": config_lib.record_fields(config),
            "parameters": int(trainer.model.count_params()),
            "backbone_parameters": int(sum(keras.ops.size(w) for w in trainer.model.weights
                                           if not w.path.startswith(("side", "fuse")))),
            "setup_seconds": round(setup, 1), "train_seconds": round(seconds, 1),
            "seconds_per_step": round(trainer.seconds_per_step, 3),
            "steps": config.epochs * config.steps_per_epoch,
            "held_out": {k: round(v, 4) for k, v in metrics.items()},
            "per_epoch": [{k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in h.items()} for h in history],
            "load_before": before, "load_after": uptime(),
        }
        print(json.dumps({name: runs[name]["held_out"]}), flush=True)
    first = next(iter(BACKBONES))
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__},
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(),
                    "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default")},
        "data": "generated scenes (keras_res2net.saliency.scenes): training seed "
                f"{args.seed}, evaluation on {args.num_val} scenes of a held-out seed",
        "targets": TARGETS,
        "runs": runs,
    }
    if first in runs:
        ours = runs[first]
        report["targets_met"] = {
            "MAE": ours["held_out"]["MAE"] <= TARGETS["MAE"],
            "maxF": ours["held_out"]["maxF"] >= TARGETS["maxF"],
            "minutes": ours["train_seconds"] / 60 <= TARGETS["minutes"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'backbone':<32} {'MAE':>7} {'maxF':>7} {'meanF':>7} {'Sm':>7} {'meanEm':>7} "
          f"{'minutes':>8}")
    for name, run in runs.items():
        held = run["held_out"]
        print(f"{name:<32} {held['MAE']:7.4f} {held['maxF']:7.4f} {held['meanF']:7.4f} "
              f"{held['Sm']:7.4f} {held['meanEm']:7.4f} {run['train_seconds'] / 60:8.1f}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

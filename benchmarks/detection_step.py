"""Seconds per training step or inference, and peak memory, of a detection experiment;
optionally against mmdetection 3.3 on the same machine, in alternation.

    python benchmarks/detection_step.py --experiment mask_rcnn_res2net101_fpn_coco \
        --height 800 --width 1333 --steps 3 --mode train
    python benchmarks/detection_step.py --mode infer --reference \
        --reference-python /tmp/mmdet-venv/bin/python

Random weights and a random image with ten random boxes and masks: the cost of a training
step does not depend on what the weights have learned. Inference time does depend on how
many detections reach the mask head: both sides report their count. The first step
(tracing, warm-up) is reported apart; the others are timed and their median quoted.

`--reference` starts `benchmarks/mmdet_step_reference.py` under `--reference-python` (an
environment with mmdetection 3.3, see docs/trainer.md; this script never imports mmdet) and
times one step there after each of ours, so both sides see the same machine load. Reported:
the median of each side, the ratio ours/mmdetection, each side's peak resident memory
(`ru_maxrss`) and the load average (`uptime`) before and after. On a shared machine the
figures are relative only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from keras_res2net.detection import configs
from keras_res2net.detection.task import DetectionTask, model_inputs

HERE = os.path.dirname(os.path.abspath(__file__))
# mmdetection 3.3 config (in the wheel's configs/res2net) of each full-size experiment.
REFERENCE_CONFIGS = {
    "faster_rcnn_res2net101_fpn_coco": "faster_rcnn",
    "mask_rcnn_res2net101_fpn_coco": "mask_rcnn",
    "cascade_rcnn_res2net101_fpn_coco": "cascade_rcnn",
    "cascade_mask_rcnn_res2net101_fpn_coco": "cascade_mask_rcnn",
    "htc_res2net101_fpn_coco": "htc",
}


def peak_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_batch(config, height: int, width: int, seed: int = 0) -> dict:
    """One padded random image with ten random boxes and full-image masks."""
    pad = lambda n: -(-n // 32) * 32  # noqa: E731
    padded_h, padded_w = pad(height), pad(width)
    rng = np.random.default_rng(seed)
    side = min(height, width)  # at 800: corners in [0, 600), sides of 20-200 px
    xy = rng.uniform(0, 0.75 * side, (1, 10, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.025 * side, 0.25 * side, (1, 10, 2))], -1)
    masks = np.zeros((1, 10, padded_h, padded_w), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes[0].astype(int)):
        masks[0, i, y1:y2, x1:x2] = 1
    return {"images": tf.constant(rng.uniform(0, 255, (1, padded_h, padded_w, 3)), tf.float32),
            "image_sizes": tf.constant([[height, width]], tf.int32),
            "boxes": tf.constant(boxes, tf.float32),
            "classes": tf.constant(rng.integers(1, config.model.num_classes + 1, (1, 10)),
                                   tf.int32),
            "masks": tf.constant(masks)}


def our_step(experiment: str, mode: str, height: int, width: int):
    """A callable running one training step (or one inference) of ours; returns a note."""
    config = configs.get_experiment(experiment)
    config.data.batch_size = 1
    task = DetectionTask(config)
    model = task.build_model()
    batch = make_batch(config, height, width)
    if mode == "train":
        optimizer = task.build_optimizer()
        step = tf.function(lambda b: task.train_step(b, model, optimizer))

        def run() -> str:
            return f"total loss {float(step(batch)['total_loss']):.3f}"
    else:
        predict = tf.function(lambda b: task.validation_step(b, model))
        inputs = model_inputs(batch)

        def run() -> str:
            return f"{int(predict(inputs)['num_detections'][0])} detections"
    return run


class Reference:
    """mmdetection in a subprocess of the reference interpreter, one step per request."""

    def __init__(self, python: str, config: str, mode: str, height: int, width: int,
                 threads: int):
        script = os.path.join(HERE, "mmdet_step_reference.py")
        self.proc = subprocess.Popen(
            [python, script, "--config", config, "--mode", mode, "--height", str(height),
             "--width", str(width), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read()  # built, weights seeded, one warm-up step done

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference process ended (exit {self.proc.wait()}); "
                               "run it alone to see its error.")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        return self._read()

    def close(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        final = self._read()
        self.proc.wait(timeout=60)
        return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="mask_rcnn_res2net101_fpn_coco")
    parser.add_argument("--mode", choices=("train", "infer"), default="train",
                        help="train: loss, gradients and optimizer update; infer: test-time "
                             "detections (and masks)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--steps", type=int, default=3,
                        help="steps per side, the first (tracing, warm-up) not timed")
    parser.add_argument("--reference", action="store_true",
                        help="also time mmdetection 3.3, alternating with ours")
    parser.add_argument("--reference-python", default="/tmp/mmdet-venv/bin/python",
                        help="interpreter of the mmdetection environment")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of the reference")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is not timed).")
    reference = None
    if args.reference:
        if args.experiment not in REFERENCE_CONFIGS:
            parser.error(f"--reference: no mmdetection config for {args.experiment}; choose "
                         f"from {', '.join(REFERENCE_CONFIGS)}.")
        if not os.access(args.reference_python, os.X_OK):
            parser.error(f"--reference-python {args.reference_python}: no such interpreter "
                         "(install the mmdetection environment, see docs/trainer.md).")
    print(f"load before: {load()}", flush=True)
    run = our_step(args.experiment, args.mode, args.height, args.width)
    start = time.perf_counter()
    note = run()
    print(f"ours, first {args.mode} step (with tracing): {time.perf_counter() - start:.1f} s, "
          f"{note}", flush=True)
    if args.reference:
        reference = Reference(args.reference_python, REFERENCE_CONFIGS[args.experiment],
                              args.mode, args.height, args.width, args.threads)
        print(f"mmdetection, first {args.mode} step: {reference.ready['seconds']:.1f} s, "
              f"{reference.ready['note']}", flush=True)
    ours, theirs = [], []
    for _ in range(args.steps - 1):
        start = time.perf_counter()
        note = run()
        ours.append(time.perf_counter() - start)
        line = f"ours {ours[-1]:.2f} s ({note})"
        if reference is not None:
            result = reference.step()
            theirs.append(result["seconds"])
            line += f"  mmdetection {theirs[-1]:.2f} s ({result['note']})"
        print(line, flush=True)
    size = f"{args.height}x{args.width} batch 1"
    print(f"{args.experiment} {args.mode} {size}: ours median {statistics.median(ours):.2f} s "
          f"(of {len(ours)}), peak resident memory {peak_gib():.2f} GiB", flush=True)
    if reference is not None:
        final = reference.close()
        median = statistics.median(theirs)
        print(f"mmdetection 3.3 ({REFERENCE_CONFIGS[args.experiment]}) {args.mode} {size}: "
              f"median {median:.2f} s (of {len(theirs)}), peak resident memory "
              f"{final['peak_gib']:.2f} GiB, torch threads {args.threads}")
        print(f"ratio ours/mmdetection: {statistics.median(ours) / median:.2f}")
    print(f"load after: {load()}")


if __name__ == "__main__":
    sys.exit(main())

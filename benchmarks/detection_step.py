"""Seconds per training step and peak memory of a detection experiment on one image.

    python benchmarks/detection_step.py --experiment mask_rcnn_res2net101_fpn_coco \
        --height 800 --width 1333 --steps 3

Random weights and a random image with ten random boxes and masks: the cost of a step does
not depend on what the weights have learned. The first step (tracing) is reported apart.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import tensorflow as tf

from keras_res2net.detection import configs
from keras_res2net.detection.task import DetectionTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="mask_rcnn_res2net101_fpn_coco")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    config = configs.get_experiment(args.experiment)
    config.data.batch_size = 1
    task = DetectionTask(config)
    model = task.build_model()
    optimizer = task.build_optimizer()
    pad = lambda n: -(-n // 32) * 32  # noqa: E731
    height, width = pad(args.height), pad(args.width)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, min(args.height, args.width) - 200, (1, 10, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (1, 10, 2))], -1)
    masks = np.zeros((1, 10, height, width), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes[0].astype(int)):
        masks[0, i, y1:y2, x1:x2] = 1
    batch = {"images": tf.constant(rng.uniform(0, 255, (1, height, width, 3)), tf.float32),
             "boxes": tf.constant(boxes, tf.float32),
             "classes": tf.constant(rng.integers(1, config.model.num_classes + 1, (1, 10)),
                                    tf.int32),
             "masks": tf.constant(masks)}
    step = tf.function(lambda b: task.train_step(b, model, optimizer))
    start = time.time()
    step(batch)
    print(f"first step (with tracing): {time.time() - start:.1f} s", flush=True)
    times = []
    for _ in range(args.steps - 1):
        start = time.time()
        losses = step(batch)
        times.append(time.time() - start)
        print(f"step: {times[-1]:.2f} s, total loss {float(losses['total_loss']):.3f}",
              flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{args.experiment} {height}x{width} batch 1: {np.mean(times):.2f} s/step "
          f"(mean of {len(times)}), peak resident memory {peak:.2f} GiB")


if __name__ == "__main__":
    main()

"""Keras bfloat16 vs float32 on models whose outputs mean something: top-1 agreement.

    python benchmarks/bf16_agreement.py [--size 224] [--train-images 200] [--test-images 300]
        [--digits-model runs/digits/model.keras] [--digits-epochs 5] [--threads 2]
        [--output benchmarks/results/bf16_agreement.json]

The two models of `benchmarks/int8_agreement.py` (random weights make agreement meaningless):
Res2Net-50 with a random-init backbone and a ridge-regression head fit on generated, separable
classes, and the digits model (trained here, or `--digits-model`). Each is BatchNorm-folded as
`predict` runs it, then run in float32 and through `keras_res2net.with_precision(model,
"bf16")` (Keras' mixed_bfloat16, float32 head) on every held-out image: top-1 agreement, the
accuracy of each, and the largest logit difference relative to the logits' scale. Where the
CPU has no native bfloat16 the bf16 model still runs (oneDNN or TensorFlow emulate it) and the
record says so (`keras_res2net.precision.bf16_unsupported_reason`). Speed is measured by
`benchmarks/runtimes.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_agreement import (  # noqa: E402
    add_arguments,
    digits_classifier,
    generated_classifier,
    grating_classes,
)


def logits_of(model, images: np.ndarray, preprocess, batch: int = 16) -> np.ndarray:
    import tensorflow as tf

    spec = [tf.TensorSpec((None, *images.shape[1:]), tf.float32)]  # one trace for all batches
    forward = tf.function(lambda x: model(x, training=False), input_signature=spec)
    return np.concatenate([np.asarray(forward(np.asarray(preprocess(images[i:i + batch]),
                                                         np.float32)), np.float32)
                           for i in range(0, len(images), batch)])


def measure(name: str, model, images: np.ndarray, labels: np.ndarray) -> dict:
    import keras_res2net
    from keras_res2net.precision import with_precision

    folded = keras_res2net.fold_batchnorm(model, allow_training=True, log=lambda _: None)
    bf16 = with_precision(folded, "bf16")
    fp32_logits = logits_of(folded, images, keras_res2net.preprocess_input)
    bf16_logits = logits_of(bf16, images, keras_res2net.preprocess_input)
    top1 = fp32_logits.argmax(-1), bf16_logits.argmax(-1)
    return {"name": name, "images": len(images),
            "agreement": float(np.mean(top1[0] == top1[1])),
            "fp32 accuracy": float(np.mean(top1[0] == labels)),
            "bf16 accuracy": float(np.mean(top1[1] == labels)),
            "max |diff| / max |logit|": float(np.max(np.abs(bf16_logits - fp32_logits))
                                              / np.max(np.abs(fp32_logits)))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="Res2Net-50 input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "bf16_agreement.json"))
    add_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from keras_res2net.precision import bf16_unsupported_reason

    start, started = [round(v, 2) for v in os.getloadavg()], time.time()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    train_images, train_labels = grating_classes(args.train_images, args.size, seed=1)
    test_images, test_labels = grating_classes(args.test_images, args.size, seed=2)
    rows = [measure(f"res2net50 {args.size}px, generated classes",
                    generated_classifier(args.size, train_images, train_labels),
                    test_images, test_labels)]
    if not args.no_digits:
        model, digits = digits_classifier(args.digits_model, args.digits_epochs)
        rows.append(measure("digits model", model, digits.val_images, digits.val_labels))
    print(f"{'model':36s} {'images':>6s} {'agree':>7s} {'fp32 acc':>8s} {'bf16 acc':>8s} "
          f"{'rel|diff|':>9s}")
    for r in rows:
        print(f"{r['name']:36s} {r['images']:>6d} {r['agreement']:>7.2%} "
              f"{r['fp32 accuracy']:>8.2%} {r['bf16 accuracy']:>8.2%} "
              f"{r['max |diff| / max |logit|']:>9.1e}")
    end = [round(v, 2) for v in os.getloadavg()]
    record = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "bf16_unsupported_reason": bf16_unsupported_reason(), "rows": rows,
              "load": {"uptime_at_start": uptime, "start": start, "end": end},
              "seconds": round(time.time() - started, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"load average {start} -> {end}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

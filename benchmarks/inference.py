"""Inference latency (batch 1) and throughput (batch 32): Res2Net next to keras.applications.

    python benchmarks/inference.py [--repeats 7] [--threads 2] [--timm-python .venv-ref/bin/python]

Pairs are timed alternately in one process (ours, reference, ours, ...) so machine noise hits
both; medians and ratios are printed. With a Python that has torch and timm (`make fixtures`
creates .venv-ref), timm's res2net50_26w_4s is timed too, in a subprocess with the same
thread count. Targets (figures, not tests): Res2Net-50 within 1.10x of Keras' ResNet50 and no
slower than 0.9x timm's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PAIRS = [("res2net50_26w_4s", "ResNet50"), ("res2net101_26w_4s", "ResNet101")]
TIMM_SCRIPT = """
import json, sys, time, statistics, torch, timm
threads, repeats, batches = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
torch.set_num_threads(threads)
model = timm.create_model("res2net50_26w_4s").eval()
out = {}
with torch.inference_mode():
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224)
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter(); model(x); times.append(time.perf_counter() - start)
        out[batch] = statistics.median(times)
print(json.dumps(out))
"""


def configure_threads(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def build(name: str):
    import keras

    import keras_res2net

    if name.startswith("res2net"):
        return keras_res2net.create_model(name, input_shape=(224, 224, 3))
    return getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))


def forward_fn(model):
    """The model's inference forward pass without Keras' per-call predict overhead: a
    tf.function on TensorFlow (same treatment for both models), predict_on_batch elsewhere."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda images: model(images, training=False))
        return lambda images: call(images).numpy()
    return model.predict_on_batch


def time_pair(models, batch: int, repeats: int) -> list[float]:
    """Median seconds per call for each model, timed alternately."""
    import numpy as np

    images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype("float32")
    forwards = [forward_fn(model) for model in models]
    for forward in forwards:  # trace and warm up
        forward(images)
        forward(images)
    samples = [[] for _ in models]
    for _ in range(repeats):
        for index, forward in enumerate(forwards):
            start = time.perf_counter()
            forward(images)
            samples[index].append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def time_timm(python: str, threads: int, repeats: int, batches: list[int]) -> dict | None:
    try:
        result = subprocess.run(
            [python, "-c", TIMM_SCRIPT, str(threads), str(repeats), json.dumps(batches)],
            capture_output=True, text=True, timeout=1800, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"(timm not timed: {err})")
        return None
    return {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--throughput-batch", type=int, default=32)
    parser.add_argument("--timm-python", default=".venv-ref/bin/python")
    parser.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS),
                        help="comma-separated ours:keras.applications pairs")
    args = parser.parse_args()
    configure_threads(args.threads)
    import keras

    print(f"keras {keras.__version__} ({keras.backend.backend()}), {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'model':22s} {'vs':10s} {'batch':>5s} {'ours ms':>9s} {'ref ms':>9s} "
          f"{'ours img/s':>10s} {'ratio':>6s}")
    batches = [1, args.throughput_batch]
    results = {}
    for pair in args.pairs.split(","):
        ours_name, ref_name = pair.split(":")
        models = [build(ours_name), build(ref_name)]
        for batch in batches:
            ours, ref = time_pair(models, batch, args.repeats)
            results[(ours_name, batch)] = ours
            print(f"{ours_name:22s} {ref_name:10s} {batch:>5d} {ours * 1e3:>9.1f} "
                  f"{ref * 1e3:>9.1f} {batch / ours:>10.1f} {ours / ref:>6.2f}", flush=True)
        keras.backend.clear_session()

    if os.path.exists(args.timm_python):
        timm_times = time_timm(args.timm_python, args.threads, args.repeats, batches)
        for batch, seconds in (timm_times or {}).items():
            ours = results.get(("res2net50_26w_4s", batch))
            if ours:
                print(f"{'res2net50_26w_4s':22s} {'timm':10s} {batch:>5d} {ours * 1e3:>9.1f} "
                      f"{seconds * 1e3:>9.1f} {batch / ours:>10.1f} {ours / seconds:>6.2f}")
    print("ratio = ours / reference time (below 1.00: ours is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

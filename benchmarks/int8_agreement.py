"""TFLite int8 vs fp32 on models whose outputs mean something: top-1 agreement and speed.

    python benchmarks/int8_agreement.py [--size 224] [--threads 2] [--repeats 9]
        [--train-images 200] [--test-images 300] [--digits-model runs/digits/model.keras]
        [--digits-epochs 5]

Random weights make int8 agreement meaningless (one class wins on every image), so two models
with meaningful outputs are measured (`benchmarks/inference.py` runs this as its edge part):

- Res2Net-50 with a random-init backbone (seed 0) and a classifier head fit on generated,
  separable classes: each class has its own hue and a sinusoidal grating with its own
  orientation and frequency, drawn at a random phase, contrast and brightness with noise.
  The head is a ridge regression (closed form, seconds) on the backbone's pooled features
  of `--train-images` images; accuracy and agreement are measured on `--test-images` others.
- The digits model: `--digits-model` (the `.keras` that `train/imagenet.py --data digits`
  writes), or, without it, the same small Res2Net (32 px, layers 1-1-1-1, width 8) trained
  here for `--digits-epochs` epochs of Adam on the embedded digits; measured on the held-out
  digits (360 images).

Each model is exported as `res2net-export` does (BatchNorm folded; int8 calibrated on 64
training images, float input/output), run by the LiteRT interpreter (XNNPACK, `--threads`
threads, batch 1): top-1 of fp32 and int8 on every held-out image (agreement, accuracy of
each), then the two artifacts timed in alternation (median of `--repeats` rounds).
Goal (issue #15): int8 at least 3x faster than fp32 with >= 99% top-1 agreement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

CLASSES = 10
CALIBRATION = 64


def grating_classes(count: int, size: int, seed: int, classes: int = CLASSES
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 RGB images (size x size) of `classes` generated classes, balanced, and
    their labels. Class k: hue k / classes, and a grating at angle k * pi / classes with
    3 + k % 4 cycles per image; phase, contrast, brightness and pixel noise random."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    rng.shuffle(labels)
    grid = (np.arange(size) + 0.5) / size
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((count, size, size, 3), np.uint8)
    for i, k in enumerate(labels):
        angle = k * np.pi / classes + rng.normal(0.0, 0.05)
        wave = np.sin(2 * np.pi * (3 + k % 4) * (xs * np.cos(angle) + ys * np.sin(angle))
                      + rng.uniform(0, 2 * np.pi))
        colour = 0.5 + 0.5 * np.cos(2 * np.pi * (k / classes - np.array([0.0, 1 / 3, 2 / 3])))
        contrast = rng.uniform(0.15, 0.35)
        pixels = 60 + 140 * colour * (1 + contrast * wave[..., None])
        pixels += rng.normal(0.0, 10.0) + rng.normal(0.0, 10.0, pixels.shape)
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


def fit_head(features: np.ndarray, labels: np.ndarray, classes: int,
             ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (d, classes) and bias of the ridge regression of one-hot labels on centred,
    scaled `features` (the dual form: n is much smaller than d), folded back to raw inputs."""
    features = features.astype(np.float64)
    mean, scale = features.mean(0), features.std(0).mean() + 1e-12
    centred = (features - mean) / scale
    targets = np.eye(classes)[labels] - 1.0 / classes
    gram = centred @ centred.T
    alpha = np.linalg.solve(gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram)),
                            targets)
    kernel = centred.T @ alpha / scale
    return kernel, -mean @ kernel


def generated_classifier(size: int, images: np.ndarray, labels: np.ndarray):
    """Res2Net-50 (random backbone, seed 0) whose Dense head is fit on `images`."""
    import keras

    import keras_res2net

    keras.utils.set_random_seed(0)
    model = keras_res2net.create_model("res2net50_26w_4s", input_shape=(size, size, 3),
                                       classes=CLASSES, classifier_activation=None)
    head = model.layers[-1]
    features = keras.Model(model.inputs, head.input)
    pooled = np.concatenate([
        np.asarray(features(keras_res2net.preprocess_input(images[i:i + 16]), training=False))
        for i in range(0, len(images), 16)])
    kernel, bias = fit_head(pooled, labels, CLASSES)
    head.kernel.assign(kernel.astype(np.float32))
    head.bias.assign(bias.astype(np.float32))
    return model


def digits_classifier(path: str | None, epochs: int):
    """The digits model at `path`, or the small digits Res2Net trained here for `epochs`."""
    import keras

    import keras_res2net
    from keras_res2net.datasets import load_digits

    digits = load_digits(image_size=32)
    if path:
        return keras.saving.load_model(path, compile=False, safe_mode=True), digits
    keras.utils.set_random_seed(0)
    model = keras_res2net.create_model("res2net50_26w_4s", layers=(1, 1, 1, 1), base_width=8,
                                       input_shape=(32, 32, 3), classes=10,
                                       classifier_activation=None)
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.asarray(keras_res2net.preprocess_input(digits.train_images)),
              digits.train_labels, epochs=epochs, batch_size=64, verbose=0)
    return model, digits


def tflite_pair(model, calibration: np.ndarray, folder: str) -> tuple:
    """(serving model, fp32 path, int8 path): the folded model as res2net-export writes it."""
    import contextlib
    import io

    from keras_res2net.export import source, tflite

    with contextlib.redirect_stdout(io.StringIO()):  # the fold count line
        serving = source.serving_model(model, fold=True)
    paths = []
    for quantize in (None, "int8"):
        path = os.path.join(folder, f"{model.name}_{quantize or 'fp32'}.tflite")
        with open(path, "wb") as handle:
            handle.write(tflite.convert(serving, quantize, calibration))
        paths.append(path)
    return serving, *paths


def batch1_runner(path: str, threads: int):
    """A callable running one image (already the artifact's input) through `path`."""
    from keras_res2net.export import tflite

    with tflite.quiet_tflite():
        interpreter = tflite.interpreter_class()(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]

    def run(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(detail["index"], image.astype(detail["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(output["index"])

    return run


def measure(name: str, model, train_images: np.ndarray, test_images: np.ndarray,
            test_labels: np.ndarray, args) -> dict:
    """Agreement, accuracies and batch-1 latencies of `model`'s TFLite fp32 and int8."""
    folder = tempfile.mkdtemp(prefix="res2net-int8-")
    rng = np.random.default_rng(0)
    calibration = train_images[rng.permutation(len(train_images))[:CALIBRATION]]
    serving, fp32_path, int8_path = tflite_pair(model, calibration, folder)
    runners = {"fp32": batch1_runner(fp32_path, args.threads),
               "int8": batch1_runner(int8_path, args.threads)}
    inputs = serving.model_inputs(test_images)
    top1 = {kind: np.array([int(np.argmax(run(inputs[i:i + 1]))) for i in range(len(inputs))])
            for kind, run in runners.items()}
    for run in runners.values():  # warm up
        run(inputs[:1])
    samples = {kind: [] for kind in runners}
    for _ in range(args.repeats):
        for kind, run in runners.items():
            start = time.perf_counter()
            run(inputs[:1])
            samples[kind].append(time.perf_counter() - start)
    ms = {kind: statistics.median(times) * 1e3 for kind, times in samples.items()}
    return {"name": name, "images": len(test_images),
            "agreement": float(np.mean(top1["fp32"] == top1["int8"])),
            "fp32 accuracy": float(np.mean(top1["fp32"] == test_labels)),
            "int8 accuracy": float(np.mean(top1["int8"] == test_labels)),
            "fp32 ms": ms["fp32"], "int8 ms": ms["int8"],
            "speedup": ms["fp32"] / ms["int8"]}


def print_rows(rows: list[dict], threads: int, repeats: int) -> None:
    print(f"\nTFLite int8 vs fp32 (BN folded, XNNPACK {threads} threads, batch 1, median of "
          f"{repeats} alternating rounds); goal: >= 99% agreement, >= 3x faster")
    print(f"{'model':34s} {'images':>6s} {'agree':>7s} {'fp32 acc':>8s} {'int8 acc':>8s} "
          f"{'fp32 ms':>8s} {'int8 ms':>8s} {'fp32/int8':>9s}")
    for r in rows:
        print(f"{r['name']:34s} {r['images']:>6d} {r['agreement']:>7.2%} "
              f"{r['fp32 accuracy']:>8.2%} {r['int8 accuracy']:>8.2%} {r['fp32 ms']:>8.1f} "
              f"{r['int8 ms']:>8.1f} {r['speedup']:>8.2f}x", flush=True)


def run_all(args) -> list[dict]:
    """Both models, measured in turn; returns their rows (printed too)."""
    train_images, train_labels = grating_classes(args.train_images, args.size, seed=1)
    test_images, test_labels = grating_classes(args.test_images, args.size, seed=2)
    model = generated_classifier(args.size, train_images, train_labels)
    rows = [measure(f"res2net50 {args.size}px, generated classes", model, train_images,
                    test_images, test_labels, args)]
    if not args.no_digits:
        digits_model, digits = digits_classifier(args.digits_model, args.digits_epochs)
        label = "digits model" + (f" ({os.path.basename(args.digits_model)})"
                                  if args.digits_model else f" ({args.digits_epochs} epochs)")
        rows.append(measure(label, digits_model, digits.train_images, digits.val_images,
                            digits.val_labels, args))
    print_rows(rows, args.threads, args.repeats)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this part (also on `benchmarks/inference.py`)."""
    parser.add_argument("--train-images", type=int, default=200,
                        help="generated images the Res2Net-50 head is fit on")
    parser.add_argument("--test-images", type=int, default=300,
                        help="held-out generated images for agreement and accuracy")
    parser.add_argument("--digits-model", default=None,
                        help="a digits .keras (train/imagenet.py --data digits); default: "
                        "train a short one here")
    parser.add_argument("--digits-epochs", type=int, default=5)
    parser.add_argument("--no-digits", action="store_true", help="skip the digits model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="Res2Net-50 input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    add_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = os.getloadavg()
    run_all(args)
    print(f"load average {start[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

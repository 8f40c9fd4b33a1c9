"""Train-step throughput on CPU: res2net50_26w_4s at 224 with and without XLA, next to
keras.applications.ResNet50 (weights=None), measured in the same run.

    python benchmarks/train_throughput.py [--batch_size 8] [--steps 2] [--repeats 3]

Times the training loop's own step (forward, backward, SGD update through `strategy.run`,
the default strategy) on random images; prints the median images/s over `repeats` timings
of `steps` steps each, and the ratios. Small batch and few steps keep it to a few minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_res2net  # noqa: E402


def make_step(model: keras.Model, jit_compile: bool):
    """The loop's train step: XLA (optionally) on forward+backward, SGD update outside."""
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables), loss

    gradients = tf.function(gradients, jit_compile=jit_compile)

    @tf.function
    def step(images, labels):
        grads, loss = gradients(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def images_per_second(model: keras.Model, jit_compile: bool, batch: int, steps: int,
                      repeats: int) -> float:
    images = tf.random.uniform((batch, 224, 224, 3))
    labels = tf.random.uniform((batch,), maxval=1000, dtype=tf.int32)
    step = make_step(model, jit_compile)
    step(images, labels).numpy()  # trace / compile
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(images, labels)
        loss.numpy()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    builders = {
        "res2net50_26w_4s": lambda: keras_res2net.create_model(
            "res2net50_26w_4s", classifier_activation=None),
        "keras.applications.ResNet50": lambda: keras.applications.ResNet50(
            weights=None, classifier_activation=None),
    }
    print(f"CPU train step, 224x224, batch {args.batch_size}, median of {args.repeats} x "
          f"{args.steps} steps, TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs")
    rates = {}
    for name, build in builders.items():
        for jit in (False, True):
            keras.utils.clear_session()
            rate = images_per_second(build(), jit, args.batch_size, args.steps, args.repeats)
            rates[(name, jit)] = rate
            print(f"{name:28s} jit_compile={jit!s:5s} {rate:8.2f} images/s", flush=True)
    res2net, resnet = builders
    for jit in (False, True):
        print(f"ratio res2net50_26w_4s / ResNet50 (jit_compile={jit}): "
              f"{rates[(res2net, jit)] / rates[(resnet, jit)]:.2f}")
    for name in builders:
        print(f"ratio jit / no jit for {name}: {rates[(name, True)] / rates[(name, False)]:.2f}")


if __name__ == "__main__":
    main()

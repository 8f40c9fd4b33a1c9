"""What `--deterministic` costs: seconds per train step with and without it, alternating.

    python benchmarks/determinism_cost.py [--repeats 3] [--steps 8] [--threads 2]

Two tasks through the one trainer: the digits classifier (`train/imagenet.py --data digits`
defaults: one block per stage, base width 8, batch 64, 32x32) and the synthetic Faster
R-CNN (`faster_rcnn_res2net50_fpn_synthetic`, batch 2, 128x128 generated shapes). Each
measurement is a process of its own (TensorFlow's op determinism stays on once enabled, and
tf.data reads it when a pipeline is built), running the trainer's own step
(`Trainer._run_step`: the task's step under the strategy, the SIGTERM flag's reduction, and
under `--deterministic` the check of the traced step before the first) for 2 warm-up steps,
then `--steps` timed ones; the modes alternate, `--repeats` times each. Printed and written to
`benchmarks/results/determinism_cost.json`: each process's median step, each mode's median
of those, the ratio deterministic / default, the weights digest after the steps (equal
digests within a mode: that run repeats), the load average (`uptime`) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "determinism_cost.json")
TASKS = ("classification", "detection")
WARMUP = 2


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build_trainer(task: str, deterministic: bool, folder: str):
    """The trainer of `task` (nothing written: its model_dir is only created by train())."""
    if task == "classification":
        from keras_res2net.training import TrainConfig, Trainer, resolve_config

        config = resolve_config(TrainConfig(data="digits", model_dir=folder, epochs=1,
                                            deterministic=deterministic))
        return Trainer(config)
    from keras_res2net.detection import configs
    from keras_res2net.detection.data.sources import coco_json_source
    from keras_res2net.detection.data.synthetic import write_dataset
    from keras_res2net.detection.trainer import DetectionTrainer, apply_overrides

    data_dir = write_dataset(os.path.join(folder, "shapes"), train=16, val=1, seed=3, size=128)
    config = apply_overrides(configs.get_experiment("faster_rcnn_res2net50_fpn_synthetic"),
                             steps=100, batch_size=2)
    return DetectionTrainer(config, coco_json_source(config, data_dir),
                            os.path.join(folder, "run"), deterministic=deterministic)


def measure(task: str, deterministic: bool, steps: int) -> dict:
    """Step times of one process (run as `--one TASK MODE`)."""
    from keras_res2net.training.trainer import weights_digest

    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(task, deterministic, folder)
        dist = trainer.strategy.distribute_datasets_from_function(
            lambda context: trainer.task.train_dataset(context, 0, 0))
        iterator = iter(dist)
        seconds = []
        for _ in range(WARMUP + steps):
            start = time.perf_counter()
            trainer._run_step(iterator)  # the loop's step, values read back (synchronised)
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds[WARMUP:], "median": statistics.median(seconds[WARMUP:]),
                "digest": weights_digest(trainer.model)}


def run_one(task: str, deterministic: bool, steps: int, threads: int) -> dict:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    mode = "deterministic" if deterministic else "default"
    done = subprocess.run([sys.executable, __file__, "--one", task, mode, "--steps", str(steps)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{task} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--one", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        task, mode = args.one
        print(json.dumps(measure(task, mode == "deterministic", args.steps)), flush=True)
        return
    import keras
    import tensorflow as tf

    before = load()
    print(f"{before}\nseconds per train step, median of {args.steps} after {WARMUP} warm-up, "
          f"{args.threads} threads, modes alternating, {args.repeats} processes each")
    results = {}
    for task in args.tasks:
        runs = {"default": [], "deterministic": []}
        for repeat in range(args.repeats):
            # Alternate which mode goes first, so a drifting load weighs on both alike.
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for deterministic in order:
                run = run_one(task, deterministic, args.steps, args.threads)
                mode = "deterministic" if deterministic else "default"
                runs[mode].append(run)
                print(f"{task:15s} {mode:13s} {run['median']:.3f} s/step  weights sha256 "
                      f"{run['digest']}", flush=True)
        medians = {mode: statistics.median(r["median"] for r in rs) for mode, rs in runs.items()}
        ratio = medians["deterministic"] / medians["default"]
        print(f"{task}: default {medians['default']:.3f} s, deterministic "
              f"{medians['deterministic']:.3f} s, ratio {ratio:.2f}; distinct digests: "
              f"default {len({r['digest'] for r in runs['default']})}, deterministic "
              f"{len({r['digest'] for r in runs['deterministic']})}", flush=True)
        results[task] = {"runs": runs, "median_seconds": medians, "ratio": ratio}
    after = load()
    print(after)
    record = {"command": "python benchmarks/determinism_cost.py " + " ".join(sys.argv[1:]),
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                           "python": platform.python_version()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "uptime_before": before, "uptime_after": after, "steps": args.steps,
              "warmup": WARMUP, "threads": args.threads, "tasks": results}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(record, f, indent=1)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

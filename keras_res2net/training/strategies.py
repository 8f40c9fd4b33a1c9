"""`--strategy` names to `tf.distribute` strategies, and who is the chief.

Every strategy goes through the same custom loop (see `trainer.py`), so this module only builds
the strategy: `multi_worker` reads the cluster from `TF_CONFIG`, `tpu` connects to `--tpu`.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def make_strategy(name: str, *, tpu: str | None = None,
                  device: str | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` for `--strategy name`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if device is None:
            device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}.")


def task_info() -> tuple[str | None, int]:
    """(task type, task index) from TF_CONFIG, or (None, 0) outside a cluster."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    return task.get("type"), int(task.get("index", 0))


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together: the chief and workers of `TF_CONFIG` under
    MultiWorkerMirroredStrategy, else 1."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return max(len(cluster.get("chief", [])) + len(cluster.get("worker", [])), 1)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes checkpoints, summaries and the final model."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_index = task_info()
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if task_type == "chief":
        return True
    # Without an explicit chief, worker 0 is the chief (the tf.distribute convention).
    return task_type == "worker" and task_index == 0 and "chief" not in cluster

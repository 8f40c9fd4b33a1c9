"""Deterministic training (`--deterministic`): TensorFlow's op determinism, and refusals.

Under `--deterministic` two runs with the same seed, the same number of processes and the
same thread settings write bit-identical weights, and a run killed and resumed writes the
weights of an uninterrupted one. What makes it so:

- `tf.config.experimental.enable_op_determinism()`: kernels that would add in a
  thread-dependent order take a deterministic path (on GPUs mostly), tf.data keeps its
  order, and a random op without a seed is an error;
- every random draw of a run is stateless and keyed: the data order by (seed, epoch), each
  augmentation by (seed, epoch, input pipeline, position), the detection RoI sampling by a
  `keras.random.SeedGenerator` counter saved in every checkpoint, the weight initialisers by
  seeds drawn in creation order from the seeded Python RNG (`keras.utils.set_random_seed`);
- refusals before training: a TPU strategy (op determinism is a CPU/GPU guarantee), and a
  train step holding an op TensorFlow has no deterministic kernel for (`check_step`, which
  names them) or a stateful random op (its state is in no checkpoint, so a resumed run would
  draw other numbers).

The op lists are those TensorFlow 2.21's kernels refuse under op determinism (their
`UnimplementedError` messages): raised only when the op runs, and not for every
nondeterministic op, hence the check of the traced step before its first run.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

# Ops without a deterministic kernel on any device.
NO_DETERMINISTIC_KERNEL = frozenset({
    "Dilation2DBackpropFilter", "Dilation2DBackpropInput", "MaxPoolGradWithArgmax",
    "DebugNumericSummaryV2", "Timestamp",
})
# Ops whose GPU kernel has no deterministic mode (TensorFlow raises when it runs them).
NO_DETERMINISTIC_GPU_KERNEL = frozenset({
    "AdjustContrast", "AdjustContrastv2", "Bincount", "DenseBincount",
    "CropAndResizeGradBoxes", "CropAndResizeGradImage", "FakeQuantWithMinMaxVarsGradient",
    "FakeQuantWithMinMaxVarsPerChannelGradient", "ResizeNearestNeighborGrad",
    "SparseTensorDenseMatMul", "SoftmaxCrossEntropyWithLogits",
    "SparseSoftmaxCrossEntropyWithLogits",
})
# Stateful random ops: seeded, they repeat within one process, but their state is in no
# checkpoint (a resumed run draws other numbers). Keras' random ops are stateless.
STATEFUL_RANDOM = frozenset({
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
    "ParameterizedTruncatedNormal", "RandomGamma", "RandomPoisson", "RandomPoissonV2",
    "Multinomial", "RandomShuffle", "RandomCrop",
})


def strategy_error(strategy: tf.distribute.Strategy | str) -> str | None:
    """Why `--deterministic` cannot run under `strategy` (a `--strategy` name or a strategy),
    or None when it can."""
    if strategy == "tpu" or isinstance(strategy, tf.distribute.TPUStrategy):
        return ("--deterministic with --strategy tpu: TensorFlow's op determinism covers CPU "
                "and GPU kernels only; train on CPUs or GPUs, or without --deterministic.")
    return None


def enable() -> None:
    """Turn on TensorFlow's op determinism for this process (it stays on)."""
    tf.config.experimental.enable_op_determinism()


def op_types(function) -> set[str]:
    """The op types of a concrete function's graph and of every function it calls."""
    graph_def = function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for library_function in graph_def.library.function:
        types.update(node.op for node in library_function.node_def)
    return types


def nondeterministic_ops(types: Iterable[str], gpu: bool) -> list[str]:
    """The op types among `types` that defeat determinism: no deterministic kernel (on any
    device, or on GPUs when `gpu`), or stateful random draws."""
    refused = NO_DETERMINISTIC_KERNEL | STATEFUL_RANDOM
    if gpu:
        refused |= NO_DETERMINISTIC_GPU_KERNEL
    return sorted(set(types) & refused)


def check_step(function) -> None:
    """Refuse (ValueError, naming them) a traced train step holding ops that would make a
    deterministic run nondeterministic on this machine's devices."""
    gpu = bool(tf.config.list_logical_devices("GPU"))
    found = nondeterministic_ops(op_types(function), gpu)
    if not found:
        return
    no_kernel = [op for op in found if op not in STATEFUL_RANDOM]
    stateful = [op for op in found if op in STATEFUL_RANDOM]
    parts = []
    if no_kernel:
        parts.append(f"{', '.join(no_kernel)} (no deterministic kernel{' on GPU' if gpu else ''})")
    if stateful:
        parts.append(f"{', '.join(stateful)} (stateful random draws, in no checkpoint)")
    alternative = " or on CPUs" if gpu else ""
    raise ValueError(f"--deterministic: the train step uses {'; '.join(parts)}, so its results "
                     f"would not repeat; train without --deterministic{alternative}.")

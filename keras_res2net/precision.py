"""bfloat16 inference: a model's layers computing in bfloat16, only where the CPU runs it fast.

`with_precision(model, "bf16")` returns a copy of any functional Keras model whose layers use
Keras' `mixed_bfloat16` policy: variables stay float32 (the same weights, bit for bit), each
layer casts them and its inputs to bfloat16 and computes in bfloat16; on TensorFlow, oneDNN
runs those convolutions with the CPU's bfloat16 instructions. The layers producing the outputs
(the classifier head `Dense`) stay float32, as Keras' mixed-precision guide advises for the
output layer, so the logits and softmax are not rounded to bfloat16's 8 significant bits (it is
one small matmul).

Only CPUs with native bfloat16 arithmetic gain from it: x86 with AVX512_BF16 or AMX-BF16 (or
AVX-NE-CONVERT), ARM with the BF16 extension. Elsewhere oneDNN emulates bfloat16 or TensorFlow
falls back to slow reference kernels, so `resolve_precision` says why in one line and keeps
float32. The CPU's features are read from the kernel's report (`/proc/cpuinfo`, the flags the
CPUID instruction gives); TensorFlow's own `IsBF16SupportedByOneDNNOnThisCPU` is not public in
current releases, and oneDNN's verbose log names the ISA only after a first convolution. On
TensorFlow, oneDNN must be on (it is by default on x86 Linux; `TF_ENABLE_ONEDNN_OPTS=0` turns
it off).
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable

import keras

__all__ = ["PRECISIONS", "bf16_unsupported_reason", "resolve_precision", "with_precision"]

PRECISIONS = ("fp32", "bf16")
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
CPUINFO = "/proc/cpuinfo"  # where the CPU's feature flags are read (a test points it elsewhere)
# Native bfloat16 arithmetic: x86 AVX512_BF16 (dot products), AMX-BF16 (tile matmuls),
# AVX-NE-CONVERT; ARM's BF16 extension (`bf16` in the Features line).
BF16_FLAGS = {"x86": ("avx512_bf16", "amx_bf16", "avx_ne_convert"), "arm": ("bf16",)}


def cpu_flags(path: str | None = None) -> set[str] | None:
    """The feature flags of the first CPU in `path` (default `CPUINFO`), or None if unreadable."""
    try:
        with open(path or CPUINFO) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        return None
    return set()


def bf16_unsupported_reason() -> str | None:
    """Why bfloat16 would not run fast here (one phrase), or None when it would."""
    flags = cpu_flags()
    if flags is None:
        return f"cannot read the CPU's features ({CPUINFO})"
    machine = platform.machine().lower()
    family = "arm" if machine.startswith(("arm", "aarch")) else "x86"
    if not flags & set(BF16_FLAGS[family]):
        names = "/".join(flag.upper() for flag in BF16_FLAGS[family])
        return f"this CPU has no native bfloat16 arithmetic ({names} not in {CPUINFO})"
    if keras.backend.backend() == "tensorflow":
        try:  # TensorFlow's own report of whether oneDNN is on (a private module)
            from tensorflow.python.util import _pywrap_util_port

            onednn = _pywrap_util_port.IsMklEnabled()
        except (ImportError, AttributeError):
            onednn = True  # cannot tell: the CPU check above stands
        if not onednn:
            return ("TensorFlow runs without oneDNN here (TF_ENABLE_ONEDNN_OPTS=0?), which has "
                    "the bfloat16 kernels")
    return None


def resolve_precision(precision: str, log: Callable[[str], None] | None = None,
                      what: str = "precision") -> str:
    """`precision` if this machine runs it fast, else "fp32" after one line saying why.

    The line goes to `log` (a CLI passes its stderr printer), else it is a `UserWarning`.
    `what` names the option in that line (e.g. "--precision").
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{what} {precision!r}: choose from {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return precision
    reason = bf16_unsupported_reason()
    if reason is None:
        return precision
    message = f"{what} {precision}: {reason}; using fp32."
    if log is not None:
        log(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=3)  # the caller's caller
    return "fp32"


def _is_functional(layer) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and not \
        isinstance(layer, keras.Sequential)


def _output_layers(model: keras.Model) -> set[int]:
    """ids of the layers that produce `model`'s outputs."""
    return {id(tensor._keras_history[0]) for tensor in keras.tree.flatten(model.outputs)}


def _recast(model: keras.Model, policy: str) -> keras.Model:
    keep = _output_layers(model)  # the head (of nested models too) stays float32

    def clone(layer):
        if _is_functional(layer):
            return _recast(layer, policy)
        config = layer.get_config()
        if id(layer) not in keep and "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """A copy of functional `model` computing in `precision` ("fp32" or "bf16"), same weights.

    `model` itself is not changed. "fp32" returns a float32 copy (e.g. of a bf16 model). The
    layers that produce the outputs (of `model` and of models nested in it: the classifier
    head) stay float32, so the outputs are float32. Call `resolve_precision` first to fall
    back on CPUs without native bfloat16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}.")
    if not _is_functional(model):
        raise ValueError(f"{model.name}: with_precision needs a functional model (subclassed "
                         "models take `dtype=` in their constructor).")
    copy = _recast(model, POLICIES[precision])
    copy.set_weights(model.get_weights())
    return copy

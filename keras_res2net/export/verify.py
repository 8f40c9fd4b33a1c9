"""Prove an exported artifact computes what the Keras model computes, and report it.

Every exporter hands back a `Runner` (a callable on a batch of images, loaded from the artifact
with the artifact's own runtime); `check_artifact` runs it on the sample images, compares with
the Keras model's outputs and times batch-1 calls. Probabilities are compared as
log-probabilities: a softmax that saturates (one class near 1, the rest near 0) hides any error
in the logits behind differences far below the bound, and log p = logit - logsumexp(logits)
shows the logits' error again. `staged_path` writes to a temporary name and
only renames onto the output path once the check has passed, so a failing artifact never sits
where a user would pick it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

# Float artifacts: max |diff| <= FLOAT_TOLERANCE * max(1, max |reference|), i.e. 1e-4 absolute
# on probabilities and logits of order 1, relative on larger logits (float32 re-association).
FLOAT_TOLERANCE = 1e-4
# fp16 weights (TFLite `--quantize fp16`, TensorRT fp16): rounding every weight to 11
# significant bits moves outputs by about 1e-3 of their scale; 1e-2 leaves a 10x margin while
# still catching a wrong graph (which moves outputs by their full scale).
FP16_TOLERANCE = 1e-2
# Probabilities below this are compared as this (log 1e-30 = -69 nats): float32 softmax loses
# them to underflow (and some runtimes flush denormals to zero), so their logarithm is noise.
LOG_FLOOR = 1e-30
# Integer artifacts (int8, dynamic range): judged by top-1 agreement with the float model.
MIN_AGREEMENT = 0.99

Runner = Callable[[np.ndarray], np.ndarray]
# (result, reference outputs, artifact outputs, kind) -> None: sets bound, passed and error.
Judge = Callable[["CheckResult", np.ndarray, np.ndarray, str], None]


class ExportError(RuntimeError):
    """An export that could not be written or did not pass its check."""


@dataclasses.dataclass
class CheckResult:
    """One artifact's line in the report."""

    format: str
    path: str
    size_bytes: int = 0
    max_abs_diff: float = float("nan")
    agreement: float = float("nan")
    latency_ms: float = float("nan")
    samples: int = 0
    bound: str = ""
    passed: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    agreement_name: str = "top-1 agreement"  # detection: "class agreement"

    def line(self) -> str:
        status = "ok" if self.passed else "FAILED"
        if self.error and not self.samples:
            return f"[{status}] {self.format:<14} {self.path}: {self.error}"
        text = (f"[{status}] {self.format:<14} {human_size(self.size_bytes):>9}  "
                f"max|diff| {self.max_abs_diff:.2e}  {self.agreement_name} {self.agreement:7.2%} "
                f"({self.samples} images)  median latency {self.latency_ms:7.2f} ms  "
                f"[{self.bound}]  {self.path}")
        return text + (f"\n         {self.error}" if self.error else "")


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def path_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def median_latency_ms(run: Runner, image: np.ndarray, repeats: int) -> float:
    """Median wall time of `repeats` batch-1 calls, after two warm-up calls."""
    for _ in range(2):
        run(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def compare(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """(max absolute difference, top-1 agreement) of two (batch, ...) output arrays."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.shape != reference.shape:
        raise ExportError(f"output shape {outputs.shape} differs from the model's "
                          f"{reference.shape}")
    if not np.all(np.isfinite(outputs)):
        return float("inf"), 0.0
    diff = float(np.max(np.abs(outputs - reference)))
    flat_ref = reference.reshape(len(reference), -1)
    flat_out = outputs.reshape(len(outputs), -1)
    agreement = float(np.mean(np.argmax(flat_ref, -1) == np.argmax(flat_out, -1)))
    return diff, agreement


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p, clipped below at log(LOG_FLOOR): the scale on which probability outputs are
    compared (a logits error of d moves log p by about d; it moves a saturated p by ~0)."""
    values = np.asarray(probabilities, dtype=np.float64)
    return np.log(np.clip(values, LOG_FLOOR, None)).astype(np.float32)


def judge(result: CheckResult, reference: np.ndarray, kind: str, compared: str = "") -> None:
    """Set `bound` and `passed` for a `kind` of artifact: float32, fp16 or int8. `compared`
    names the scale of a float bound when it is not the outputs' own ("log-prob")."""
    scale = max(1.0, float(np.max(np.abs(reference))))
    if kind == "int8":
        result.bound = f"agreement >= {MIN_AGREEMENT:.0%}"
        result.passed = result.agreement >= MIN_AGREEMENT
    else:
        tolerance = (FLOAT_TOLERANCE if kind == "float32" else FP16_TOLERANCE) * scale
        result.bound = f"{compared + ' ' if compared else ''}|diff| <= {tolerance:.1e}"
        result.passed = result.max_abs_diff <= tolerance
    if not result.passed:
        result.error = f"check failed: outside the bound {result.bound}"


def check_artifact(result: CheckResult, load: Callable[[], Runner], images: np.ndarray,
                   reference: np.ndarray, kind: str, latency_repeats: int = 20,
                   output_name: str = "logits",
                   judge_outputs: Judge | None = None) -> CheckResult:
    """Load the artifact, run `images` through it, compare with `reference`, time batch 1.

    `output_name` "probabilities" compares log-probabilities (`log_probabilities`); logits
    and features are compared as they are. `judge_outputs(result, reference, outputs, kind)`
    replaces `judge` where a task has its own bound (saliency maps: their mean absolute
    difference).
    """
    result.size_bytes = path_size(result.path)
    as_logs = output_name == "probabilities"
    try:
        run = load()
        outputs = run(images)
        result.samples = len(images)
        if as_logs:
            reference, outputs = log_probabilities(reference), log_probabilities(outputs)
        result.max_abs_diff, result.agreement = compare(reference, outputs)
    except Exception as err:  # a corrupt artifact fails in its runtime's own way
        result.error = f"could not run the artifact: {type(err).__name__}: {err}"
        result.passed = False
        return result
    if judge_outputs is None:
        judge(result, reference, kind, "log-prob" if as_logs else "")
    else:
        judge_outputs(result, reference, np.asarray(outputs, np.float32), kind)
    if result.passed and latency_repeats:
        result.latency_ms = median_latency_ms(run, images[:1], latency_repeats)
    return result


def write_and_check(fmt: str, final_path: str, *, force: bool, write: Callable[[str], None],
                    load: Callable[[str], Runner], images: np.ndarray, reference: np.ndarray,
                    kind: str, latency_repeats: int = 20,
                    inspect: Callable[[str], list[str]] | None = None,
                    output_name: str = "logits",
                    judge_outputs: Judge | None = None) -> CheckResult:
    """Write an artifact to a staging path, check it, and move it to `final_path` if it passed.

    `output_name` is what the artifact returns and `judge_outputs` replaces the default bound
    (see `check_artifact`). `inspect` may add notes (op lists, compatibility findings) from the
    staged artifact. The returned result says whether the artifact passed; a failed one is not
    left anywhere.
    """
    result = CheckResult(fmt, final_path)
    try:
        with staged_path(final_path, force) as temp:
            write(temp)
            result.path = temp
            check_artifact(result, lambda: load(temp), images, reference, kind, latency_repeats,
                           output_name, judge_outputs)
            if inspect is not None and result.passed:
                result.notes.extend(inspect(temp))
            if not result.passed:
                raise ExportError(result.error)
    except Exception as err:
        result.passed = False
        result.error = result.error or f"export failed: {type(err).__name__}: {err}"
        result.error += " (nothing written)"
    result.path = final_path
    return result


def check_output_free(path: str, force: bool) -> None:
    """Refuse to replace an existing output unless `force`."""
    if os.path.lexists(path) and not force:
        raise ExportError(f"{path} already exists: pass --force to overwrite it, or choose "
                          "another --output folder.")


@contextlib.contextmanager
def staged_path(final_path: str, force: bool) -> Iterator[str]:
    """A temporary path next to `final_path`; moved onto it only if the block succeeds.

    The block writes and checks the artifact and must raise (ExportError) if the check fails;
    the temporary file or folder is removed on any exception.
    """
    check_output_free(final_path, force)
    folder = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=folder)
    temp = os.path.join(staging, os.path.basename(final_path))
    try:
        yield temp
        if os.path.lexists(final_path):
            remove(final_path)
        os.replace(temp, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def summary_table(results: list[CheckResult]) -> str:
    """A short fixed-width table of all artifacts."""
    rows = [("format", "size", "max|diff|", "top-1 agr.", "latency ms", "check", "path")]
    for r in results:
        rows.append((r.format, human_size(r.size_bytes) if r.size_bytes else "-",
                     f"{r.max_abs_diff:.1e}" if r.samples else "-",
                     f"{r.agreement:.2%}" if r.samples else "-",
                     f"{r.latency_ms:.2f}" if r.latency_ms == r.latency_ms else "-",
                     "ok" if r.passed else "FAILED", r.path))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)

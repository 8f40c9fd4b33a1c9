"""One rule for every command line: short errors, honest exit codes, nothing half-written.

* A user error (`UsageError`: a bad flag or input, exit 2; `WorkError`: the work failed, for
  example a full disk, exit 1) prints one or two lines naming the file, flag or record at
  fault; the traceback only with `--verbose`.
* Every artifact is written under a temporary name in its final folder and renamed into place
  (`atomic_file`), so a killed run never leaves a truncated file at the final path, and
  `remove_stale` deletes (and reports) the temporaries of earlier killed runs.
* `quiet_tf_startup` imports TensorFlow for a command line without its start-up noise (the
  cuInit failure on machines without a GPU, oneDNN and driver notices), keeping real errors.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator


class UsageError(ValueError):
    """Bad flags or input: exit status 2."""

    exit_code = 2


class WorkError(RuntimeError):
    """The work itself failed (disk full, read-only folder, ...): exit status 1."""

    exit_code = 1


def exit_code(err: BaseException) -> int:
    if isinstance(err, (UsageError, WorkError)):
        return err.exit_code
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError)):
        return 2
    return 1


def report(err: BaseException, prog: str, verbose: bool = False) -> int:
    """Print `err` as `prog: error: ...` (with the traceback if `verbose`); return the exit code."""
    if verbose:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    code = exit_code(err)
    message = str(err).strip() or type(err).__name__
    if not isinstance(err, (UsageError, WorkError, ValueError, OSError)):
        message = f"{type(err).__name__}: {message.splitlines()[0][:300]}"  # unexpected
    if code == 1 and not verbose:
        message += " (--verbose shows the traceback)"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def current_umask() -> int:
    """The process umask (read by setting and restoring it), for the modes of renamed files."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error_message(err: OSError, path: str) -> str:
    """`err` in words, naming `path` (ENOSPC, EROFS, EACCES get a plain reason)."""
    import errno

    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "disk quota exceeded"}
    reason = reasons.get(err.errno, err.strerror or str(err))
    return f"cannot write {path}: {reason}"


@contextlib.contextmanager
def atomic_file(final_path: str, prefix: str = ".partial-") -> Iterator[str]:
    """A temporary path in `final_path`'s folder, renamed onto `final_path` if the block ends
    normally and removed otherwise. The file gets the mode a plain `open()` would (0666 & ~umask),
    not mkstemp's 0600. OSErrors while writing become `WorkError`s naming `final_path`."""
    folder = os.path.dirname(os.path.abspath(final_path))
    suffix = "".join(_suffixes(os.path.basename(final_path)))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(handle)
        os.remove(temporary)  # writers (h5py, zip) create it themselves
    except OSError as err:
        raise WorkError(os_error_message(err, final_path)) from err
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, final_path)
    except OSError as err:
        raise WorkError(os_error_message(err, final_path)) from err
    finally:
        with contextlib.suppress(OSError):
            if os.path.isdir(temporary):
                shutil.rmtree(temporary)
            elif os.path.lexists(temporary):
                os.remove(temporary)


def _suffixes(name: str) -> list[str]:
    # ".weights.h5" for "x.weights.h5" (Keras checks the whole suffix), ".keras" for "m.keras".
    parts = name.split(".")[1:]
    return ["." + part for part in parts[-2:]] if name.endswith(".weights.h5") else (
        ["." + parts[-1]] if parts else [])


def remove_stale(folder: str, patterns: tuple[str, ...], prog: str | None = None) -> list[str]:
    """Delete entries of `folder` matching `patterns` (temporaries of killed runs); print one
    line per removal (prefixed `prog: `) and return their paths."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError as err:
            print(f"{prog or 'note'}: could not remove stale {path}: {err}", file=sys.stderr)
            continue
        removed.append(path)
        print(f"{prog or 'note'}: removed {path}, left by an earlier run that was interrupted",
              file=sys.stderr)
    return removed


# TensorFlow's start-up lines that say nothing to the user of a command line. The C++ ones are
# logged before TF reads TF_CPP_MIN_LOG_LEVEL (or, cuInit's, at ERROR level on every machine
# without a GPU driver), so the level alone does not silence them.
STARTUP_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
)
NO_DRIVER = re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers")
CUINIT = re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_(platform|driver|executor)\.cc:\d+\] failed call to "
                    r"cuInit")
# TF's Python INFO line on every checkpoint save (shown once absl's app.run sets INFO).
PYTHON_NOISE = ("Sharding callback duration",)


def filter_startup_noise(text: str) -> str:
    """`text` (captured stderr) without TensorFlow's start-up noise. cuInit's failure is noise
    only where TF also found no CUDA driver at all (no GPU to use); elsewhere it is kept."""
    no_driver = bool(NO_DRIVER.search(text))
    kept = [line for line in text.splitlines(keepends=True)
            if not any(pattern.search(line) for pattern in STARTUP_NOISE)
            and not (no_driver and CUINIT.search(line))]
    return "".join(kept)


class _DropPythonNoise:
    def filter(self, record) -> bool:
        return not any(noise in record.getMessage() for noise in PYTHON_NOISE)


def quiet_tf_startup() -> None:
    """Import TensorFlow for a command line without its start-up noise.

    Sets TensorFlow's C++ log level to warnings-and-errors unless the user chose one, then, if
    the level is at least 2 and the backend is TensorFlow, imports TensorFlow and lists its
    devices (where cuInit runs) with stderr (fd 2) captured, and prints back every captured
    line but the known noise (`STARTUP_NOISE`): real errors and warnings still show. Also drops
    TF's per-checkpoint "Sharding callback duration" INFO line."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").addFilter(_DropPythonNoise())
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = 0
    backend = os.environ.get("KERAS_BACKEND", "tensorflow") or "tensorflow"
    if level < 2 or backend != "tensorflow" or "tensorflow" in sys.modules:
        return
    with _filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """File descriptor 2 (where C++ logs go) captured for the block, then written back without
    `STARTUP_NOISE`, also when the block raises."""
    with filtered_stderr(filter_startup_noise):
        yield


def drop_lines(*patterns: str):
    """A filter for `filtered_stderr` dropping the lines that match any regex of `patterns`."""
    compiled = [re.compile(pattern) for pattern in patterns]
    return lambda text: "".join(line for line in text.splitlines(keepends=True)
                                if not any(regex.search(line) for regex in compiled))


@contextlib.contextmanager
def filtered_stderr(keep) -> Iterator[None]:
    """File descriptor 2 captured in a temporary file for the block (C++ libraries write there,
    below Python), then written back through `keep(text) -> text`, also when the block raises.
    For short blocks that print known noise (TensorFlow start-up, the TFLite calibrator)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            sys.stderr.write(keep(buffer.read().decode("utf-8", "replace")))
            sys.stderr.flush()

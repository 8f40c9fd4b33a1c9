"""One rule for every command line: short errors, honest exit codes, nothing half-written.

* A user error (`UsageError`: a bad flag or input, exit 2; `WorkError`: the work failed, for
  example a full disk, exit 1) prints one or two lines naming the file, flag or record at
  fault; the traceback only with `--verbose`.
* Every artifact is written under a temporary name in its final folder and renamed into place
  (`atomic_file`), so a killed run never leaves a truncated file at the final path, and
  `remove_stale` deletes (and reports) the temporaries of earlier killed runs.
* `quiet_tf_startup` sets TensorFlow's C++ log level to warnings-and-errors-only unless the user
  chose one, before TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
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


def _umask() -> int:
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
        os.chmod(temporary, 0o666 & ~_umask())
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


def quiet_tf_startup() -> None:
    """TensorFlow's C++ logs at warnings and above only (info lines such as cuInit's failed call
    on a machine without a GPU are noise), unless the user set TF_CPP_MIN_LOG_LEVEL."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

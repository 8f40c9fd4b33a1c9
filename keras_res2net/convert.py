"""Convert a published PyTorch Res2Net checkpoint into a Keras `.weights.h5`, once and for all.

    python -m keras_res2net.convert SRC DST.weights.h5 --model NAME [--force]
    python -m keras_res2net.convert SRC [DST.weights.h5] --model NAME --preset DIR [--force]

The layout (official, timm, mmdetection) is detected from the keys, the mapping is strict, and
the written file is reloaded into a fresh model and checked against the converted one before it
replaces DST (written to a temporary file first, so DST is never half-written). The
architecture facts a later load needs (classifier size, mmdetection's missing stage pool) are
stored in the file as an HDF5 attribute. `--preset DIR` writes a keras-hub preset folder
(`keras_res2net.hub_preset`: backbone, classifier when the checkpoint has one, the variant's
preprocessing), also verified and renamed into place; it needs the `hub` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import time

import numpy as np

from keras_res2net import variants
from keras_res2net.cli_errors import (
    UsageError,
    WorkError,
    atomic_file,
    os_error_message,
    remove_stale,
    report,
)
from keras_res2net.weights import ARCH_ATTR, TorchWeights

PROG = "python -m keras_res2net.convert"
TEMP_PREFIX = ".converting-"


class _WeightsBuffer(io.BytesIO):
    """An in-memory `.weights.h5` (Keras checks the name's suffix via str())."""

    def __str__(self) -> str:
        return "in-memory.weights.h5"


def weights_bytes(model, arch: dict) -> bytes:
    """The `.weights.h5` file of `model` with `arch` as an attribute, built in memory: h5py
    writing straight onto a full disk leaves a broken handle that segfaults at exit, while a
    plain file write fails with a clean OSError."""
    import h5py

    buffer = _WeightsBuffer()
    model.save_weights(buffer, overwrite=True)
    with h5py.File(buffer, "a") as handle:
        handle.attrs[ARCH_ATTR] = json.dumps(arch)
    return buffer.getvalue()


def write_verified(model, arch: dict, destination: str, rebuild, size: int = 224) -> None:
    """Save `model`'s weights (+ `arch`) under a temporary name beside `destination`, reload them
    with `rebuild(path)`, compare outputs, and only then rename onto `destination`. A full disk
    or read-only folder raises WorkError naming `destination`; nothing partial is left."""
    with atomic_file(destination, prefix=TEMP_PREFIX) as temporary:
        payload = weights_bytes(model, arch)
        try:
            with open(temporary, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise WorkError(os_error_message(err, destination)) from err
        check = rebuild(temporary)
        images = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype("float32")
        outputs = [np.asarray(m(images, training=False)) for m in (model, check)]
        diff = float(np.abs(outputs[0] - outputs[1]).max())
        if diff != 0.0:
            raise WorkError(f"{destination}: reloaded weights differ from the converted model "
                            f"({diff:.2e}); nothing written.")


def convert(source: str, destination: str | None, model_name: str, force: bool = False,
            preset: str | None = None, **knobs) -> dict:
    """Convert `source` into `destination` and/or the keras-hub preset folder `preset`;
    returns a summary dict (also printed by main). `knobs` (layers, base_width, scale,
    cardinality, v1b) convert a modified variant (Python API; tests use small ones)."""
    from keras_res2net.models import build_res2net, resolve_spec

    if not destination and not preset:
        raise UsageError("Nothing to write: give a DST.weights.h5, --preset DIR, or both.")
    if destination:
        if not destination.endswith(".weights.h5"):
            raise UsageError(f"Destination {destination!r} must end in .weights.h5 (Keras' "
                             "format).")
        if os.path.isdir(destination):
            raise UsageError(f"Destination {destination} is a folder.")
        if os.path.exists(destination) and not force:
            raise UsageError(f"{destination} exists; pass --force to overwrite it.")
        folder = os.path.dirname(os.path.abspath(destination))
        remove_stale(folder, (f"{TEMP_PREFIX}*.weights.h5",), PROG)  # of killed runs
    if preset:
        from keras_res2net.hub_preset import check_destination

        check_destination(preset, force)
        try:
            import keras_res2net.hub  # noqa: F401  the keras-hub classes, before any work
        except ImportError as err:
            raise UsageError(f"--preset: {err}") from err
    if not os.path.exists(source):
        raise UsageError(f"{source}: no such checkpoint file.")
    try:
        spec = resolve_spec(model_name, **knobs)
    except ValueError as err:
        raise UsageError(f"--model: {err}") from err
    start = time.perf_counter()
    checkpoint = TorchWeights(source)
    include_top = checkpoint.checkpoint.has_head
    classes = checkpoint.checkpoint.tensors["fc.weight"].shape[0] if include_top else 1000
    stage_pool = checkpoint.layout != "mmdet"
    model = build_res2net(spec, include_top=include_top, classes=classes,
                          classifier_activation=None, weights=checkpoint)
    arch = {"spec": dataclasses.asdict(spec), "include_top": include_top, "classes": classes,
            "stage_pool": stage_pool, "source": os.path.basename(source),
            "layout": checkpoint.layout}

    def rebuild(path):
        return build_res2net(spec, include_top=include_top, classes=classes,
                             classifier_activation=None, weights=path)

    if destination:
        write_verified(model, arch, destination, rebuild)
    preset_files = []
    if preset:
        from keras_res2net.hub_preset import write_preset

        preset_files = write_preset(model, spec, variants.pretrained_config(model_name), preset,
                                    force=force, stage_pool=stage_pool)
    report = checkpoint.report
    return {"source": source, "destination": destination, "model": spec.name,
            "layout": checkpoint.layout, "include_top": include_top, "classes": classes,
            "tensors": report.assigned, "set_aside": report.set_aside,
            "preset": preset, "preset_files": preset_files,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_res2net.convert", description=__doc__.strip().splitlines()[0])
    parser.add_argument("source", help="checkpoint: .pth/.pt/.bin (needs torch) or .safetensors")
    parser.add_argument("destination", nargs="?", default=None,
                        help="output .weights.h5 path (optional with --preset)")
    parser.add_argument("--model", required=True,
                        help="variant name, one of: " + ", ".join(variants.list_models()))
    parser.add_argument("--preset", default=None, metavar="DIR",
                        help="also write a keras-hub preset folder (needs the hub extra)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing destination or preset folder")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        result = convert(args.source, args.destination, args.model, force=args.force,
                         preset=args.preset)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    head = f"{result['classes']}-class head" if result["include_top"] else "backbone only"
    targets = [path for path in (result["destination"], result["preset"]) if path]
    print(f"converted {result['source']} ({result['layout']} layout, {head}) -> "
          f"{' and '.join(targets)}: {result['tensors']} tensors, reload verified, "
          f"{result['seconds']:.1f}s")
    if result["preset"]:
        print(f"  keras-hub preset {result['preset']}: {', '.join(result['preset_files'])}")
    for key, why in sorted(result["set_aside"].items()):
        print(f"  set aside {key}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Convert a published PyTorch Res2Net checkpoint into a Keras `.weights.h5`, once and for all.

    python -m keras_res2net.convert SRC DST.weights.h5 --model NAME [--force]

The layout (official, timm, mmdetection) is detected from the keys, the mapping is strict, and
the written file is reloaded into a fresh model and checked against the converted one before it
replaces DST (written to a temporary file first, so DST is never half-written). The
architecture facts a later load needs (classifier size, mmdetection's missing stage pool) are
stored in the file as an HDF5 attribute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

from keras_res2net import variants
from keras_res2net.weights import ARCH_ATTR, TorchWeights


def _write_arch(path: str, arch: dict) -> None:
    import h5py

    with h5py.File(path, "a") as handle:
        handle.attrs[ARCH_ATTR] = json.dumps(arch)


def convert(source: str, destination: str, model_name: str, force: bool = False) -> dict:
    """Convert `source` into `destination`; returns a summary dict (also printed by main)."""
    from keras_res2net.models import build_res2net

    if not destination.endswith(".weights.h5"):
        raise ValueError(f"Destination {destination!r} must end in .weights.h5 (Keras' format).")
    if os.path.exists(destination) and not force:
        raise FileExistsError(f"{destination} exists; pass --force to overwrite it.")
    spec = variants.get_variant(model_name)
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

    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".weights.h5", dir=folder, prefix=".converting-")
    os.close(handle)
    try:
        model.save_weights(temporary, overwrite=True)
        _write_arch(temporary, arch)
        check = build_res2net(spec, include_top=include_top, classes=classes,
                              classifier_activation=None, weights=temporary)
        images = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype("float32")
        outputs = [np.asarray(m(images, training=False)) for m in (model, check)]
        diff = float(np.abs(outputs[0] - outputs[1]).max())
        if diff != 0.0:
            raise RuntimeError(f"Reloaded weights differ from the converted model ({diff:.2e}).")
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    report = checkpoint.report
    return {"source": source, "destination": destination, "model": spec.name,
            "layout": checkpoint.layout, "include_top": include_top, "classes": classes,
            "tensors": report.assigned, "set_aside": report.set_aside,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_res2net.convert", description=__doc__.strip().splitlines()[0])
    parser.add_argument("source", help="checkpoint: .pth/.pt/.bin (needs torch) or .safetensors")
    parser.add_argument("destination", help="output .weights.h5 path")
    parser.add_argument("--model", required=True,
                        help="variant name, one of: " + ", ".join(variants.list_models()))
    parser.add_argument("--force", action="store_true", help="overwrite an existing destination")
    args = parser.parse_args(argv)
    try:
        result = convert(args.source, args.destination, args.model, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    head = f"{result['classes']}-class head" if result["include_top"] else "backbone only"
    print(f"converted {result['source']} ({result['layout']} layout, {head}) -> "
          f"{result['destination']}: {result['tensors']} tensors, reload verified, "
          f"{result['seconds']:.1f}s")
    for key, why in sorted(result["set_aside"].items()):
        print(f"  set aside {key}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

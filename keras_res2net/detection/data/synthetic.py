"""A deterministic synthetic instance-segmentation dataset written in COCO format.

Coloured circles, rectangles and triangles (three classes) on textured backgrounds (smooth
noise plus stripes); shapes never overlap, so every box and mask is exact. The same seed
writes byte-identical PNGs and JSON. With `--semantic` each split also gets COCO-Stuff-style
label maps in `<split>_semantic/` (drawn from the masks, no extra random numbers, so the
images and JSON are the same either way). Usage:

    python -m keras_res2net.detection.data.synthetic --out_dir data/shapes --seed 0 --semantic
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from keras_res2net.cli_errors import UsageError, WorkError, os_error_message, remove_stale, report
from keras_res2net.detection.data.coco import SEMANTIC_IGNORE

PROG = "python -m keras_res2net.detection.data.synthetic"
STAGING_PREFIX = ".partial-"

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"},
              {"id": 3, "name": "triangle"})


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (4, 4, 3))
    image = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
        (size, size), Image.BILINEAR), dtype=np.float32)
    period = rng.uniform(6, 20)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += stripes[..., None] * rng.uniform(10, 40)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by `radius` pixels (square), so shapes keep a gap between them."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    size_y, size_x = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + size_y, dx:dx + size_x]
    return out


def _shape_mask(rng: np.random.Generator, category: int, size: int) -> np.ndarray:
    side = rng.uniform(0.12, 0.45) * size
    w = side * rng.uniform(0.7, 1.3)
    h = side * rng.uniform(0.7, 1.3)
    x0 = rng.uniform(0, size - w)
    y0 = rng.uniform(0, size - h)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if category == 1:
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=1)
    elif category == 2:
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=1)
    else:
        apex = x0 + rng.uniform(0.2, 0.8) * w
        draw.polygon([(apex, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def make_image(rng: np.random.Generator, size: int, max_objects: int):
    """One image (size, size, 3) uint8 and its list of (category, mask) objects."""
    image = _background(rng, size)
    occupied = np.zeros((size, size), dtype=bool)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            category = int(rng.integers(1, len(CATEGORIES) + 1))
            mask = _shape_mask(rng, category, size)
            if mask.sum() >= 40 and not (_dilate(occupied, 2) & (mask > 0)).any():
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        colour[rng.integers(0, 3)] = rng.choice([20.0, 235.0])  # saturated
        image[mask > 0] = colour
        occupied |= mask > 0
        objects.append((category, mask))
    return image.astype(np.uint8), objects


def _annotation(ann_id: int, image_id: int, category: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": category,
            "bbox": [x0, y0, w, h], "area": int(mask.sum()), "iscrowd": 0,
            "segmentation": rle}


def semantic_map(objects, size: int) -> np.ndarray:
    """(size, size) uint8 label map: 0 background ("stuff"), the category on each shape, and
    255 (ignore) on the 1-pixel ring just outside each shape, as unlabelled boundaries."""
    label_map = np.zeros((size, size), np.uint8)
    for _, mask in objects:
        label_map[_dilate(mask > 0, 1) & (mask == 0)] = SEMANTIC_IGNORE
    for category, mask in objects:  # shapes keep a 2-pixel gap: no ring covers another shape
        label_map[mask > 0] = category
    return label_map


def write_split(out_dir: Path, split: str, count: int, seed: int, size: int = 128,
                max_objects: int = 4, semantic: bool = False) -> Path:
    """Write `count` images to `out_dir/split/` and `out_dir/split.json`; returns the JSON.

    With `semantic`, also each image's `semantic_map` to `out_dir/<split>_semantic/`. Everything
    is written into a `.partial-*` folder inside `out_dir` and moved into place at the end (an
    earlier split of the same name is replaced), so a full disk or a kill never leaves images
    without their JSON; an OSError becomes a `WorkError` naming the split."""
    out_dir = Path(out_dir)
    final_json = out_dir / f"{split}.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{split}-", dir=out_dir))
    except OSError as err:
        raise WorkError(os_error_message(err, str(final_json))) from err
    try:
        _write_split_files(staging, split, count, seed, size, max_objects, semantic)
        names = [split] + ([f"{split}_semantic"] if semantic else []) + [final_json.name]
        for name in names:  # the JSON last: its presence means the images are complete
            target = out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    except OSError as err:
        raise WorkError(f"{os_error_message(err, str(out_dir / split))}; nothing of the "
                        f"{split} split was kept") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_json


def _write_split_files(folder: Path, split: str, count: int, seed: int, size: int,
                       max_objects: int, semantic: bool) -> None:
    rng = np.random.default_rng(seed)
    image_dir = folder / split
    image_dir.mkdir()
    semantic_dir = folder / f"{split}_semantic"
    if semantic:
        semantic_dir.mkdir()
    images, annotations = [], []
    for index in range(count):
        image_id = index + 1
        image, objects = make_image(rng, size, max_objects)
        name = f"{image_id:06d}.png"
        save_png(image, image_dir / name)
        if semantic:
            save_png(semantic_map(objects, size), semantic_dir / name)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for category, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category, mask))
    (folder / f"{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": list(CATEGORIES)}))


def save_png(array: np.ndarray, path: Path) -> None:
    """One PNG (a seam for tests that simulate a full disk)."""
    Image.fromarray(array).save(path)


def write_dataset(out_dir, train: int = 600, val: int = 100, seed: int = 0,
                  size: int = 128, semantic: bool = False) -> Path:
    """Write the train and val splits (different seeds derived from `seed`); with `semantic`
    also `train_semantic/` and `val_semantic/` label maps."""
    out_dir = Path(out_dir)
    write_split(out_dir, "train", train, seed * 2 + 1, size, semantic=semantic)
    write_split(out_dir, "val", val, seed * 2 + 2, size, semantic=semantic)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--semantic", action="store_true",
                        help="also write <split>_semantic/ label maps (HTC's semantic branch)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        if min(args.train, args.val) < 1 or args.size < 32:
            raise UsageError("--train and --val must be at least 1 and --size at least 32")
        remove_stale(args.out_dir, (f"{STAGING_PREFIX}*",), PROG)
        write_dataset(args.out_dir, args.train, args.val, args.seed, args.size, args.semantic)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    print(f"wrote {args.train} train and {args.val} val images to {args.out_dir}: train/, "
          f"train.json, val/, val.json" + (", train_semantic/, val_semantic/"
                                           if args.semantic else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

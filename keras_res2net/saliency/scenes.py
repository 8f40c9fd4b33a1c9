"""Synthetic saliency scenes: salient objects on textured clutter, with soft edges.

Each scene is a square RGB image and its binary mask. The background is a smooth colour
field (a coarse random grid upsampled bilinearly) in muted colours, with stripes and a few
dozen small clutter patches of its own palette, and a few small saturated distractors. On it
lie one to three salient objects: random blobs (a radius that varies with the angle) or
rotated rectangles, large, in a saturated colour with a texture of their own, blended in
with a soft edge (a logistic ramp about two pixels wide). The mask is the union of the
objects' cores (blend weight >= 0.5), as binary as the SOD datasets' masks; distractors and
clutter are not salient. Scene `index` of stream `seed` depends on nothing else
(`numpy.random.default_rng((seed, index))`), so a seed names a data set and a held-out seed
a held-out one.

    python -m keras_res2net.saliency.scenes --out_dir data/scenes --count 64 --seed 1

writes scenes as a folder in the DUTS/ECSSD layout (images/*.jpg, masks/*.png), which
train/saliency.py --data, --val_data and the predict command read like any real data set.
"""

from __future__ import annotations

import os
import sys

import numpy as np

EDGE_SOFTNESS = 0.8  # pixels: the logistic ramp's scale (about 2 px from 10% to 90%)
MAX_OBJECTS = 3


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """A random (cells x cells) grid upsampled bilinearly to (size, size, channels)."""
    grid = rng.random((cells + 1, cells + 1, channels))
    coords = np.linspace(0, cells, size)
    low = np.minimum(coords.astype(int), cells - 1)
    frac = (coords - low)[:, None]
    rows = grid[low] * (1 - frac[..., None]) + grid[low + 1] * frac[..., None]
    cols = rows[:, low] * (1 - frac[None, :, :]) + rows[:, low + 1] * frac[None, :, :]
    return cols


def _muted(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0.25, 0.75)
    return np.clip(grey + rng.normal(0, 0.08, 3), 0, 1)


def _saturated(rng: np.random.Generator) -> np.ndarray:
    colour = rng.uniform(0.0, 0.35, 3)
    colour[rng.integers(3)] = rng.uniform(0.75, 1.0)
    if rng.random() < 0.4:  # a secondary primary: yellows, magentas, cyans
        colour[rng.integers(3)] = rng.uniform(0.6, 1.0)
    return colour


def _blob_distance(yy, xx, cy, cx, radius, rng: np.random.Generator) -> np.ndarray:
    """Signed distance-like field (pixels, positive inside) of a random star-shaped blob."""
    angle = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(yy - cy, xx - cx)
    edge = np.ones_like(angle)
    for k in range(2, 5):
        edge += rng.uniform(0, 0.25 / (k - 1)) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return radius * edge - rho


def _box_distance(yy, xx, cy, cx, radius, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (pixels, positive inside) of a rotated rectangle."""
    theta = rng.uniform(0, np.pi)
    half_a, half_b = radius, radius * rng.uniform(0.45, 1.0)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    return np.minimum(half_a - np.abs(u), half_b - np.abs(v))


def _shape_weight(rng, size: int, radius: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """(window, blend weight in the window) of a random blob or box of about `radius`."""
    cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
    shape = _blob_distance if rng.random() < 0.6 else _box_distance
    reach = int(np.ceil(radius * 1.6)) + 4  # blobs reach 1.5 radii, boxes sqrt(2)
    top, left = max(0, int(cy) - reach), max(0, int(cx) - reach)
    window = (slice(top, min(size, int(cy) + reach + 1)),
              slice(left, min(size, int(cx) + reach + 1)))
    yy, xx = np.mgrid[window].astype(np.float64)
    return window, _logistic(shape(yy, xx, cy, cx, radius, rng) / EDGE_SOFTNESS)


def _texture(rng: np.random.Generator, yy, xx, size: int, strength: float) -> np.ndarray:
    """Stripes at a random angle and period, in [-strength, strength]."""
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, size / 4)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)
    return strength * np.sin(phase + rng.uniform(0, 2 * np.pi))


def make_scene(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of stream `seed`: (uint8 RGB image (size, size, 3), uint8 mask
    (size, size) of 0 and 255)."""
    rng = np.random.default_rng((seed, index))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Background: muted smooth colour field, stripes, clutter patches.
    base = _muted(rng)
    field = _smooth_field(rng, size, int(rng.integers(2, 6)), 3)
    image = np.clip(base + (field - 0.5) * 0.35, 0, 1)
    image += _texture(rng, yy, xx, size, rng.uniform(0.02, 0.08))[..., None]
    for _ in range(int(rng.integers(15, 35))):
        window, weight = _shape_weight(rng, size, rng.uniform(0.02, 0.07) * size)
        image[window] += weight[..., None] * (_muted(rng) - image[window])
    for _ in range(int(rng.integers(0, 4))):  # small saturated distractors: not salient
        window, weight = _shape_weight(rng, size, rng.uniform(0.03, 0.06) * size)
        image[window] += weight[..., None] * (_saturated(rng) - image[window])
    # Salient objects: large, saturated, textured, soft-edged.
    count = 1 + int(rng.choice(MAX_OBJECTS, p=(0.5, 0.35, 0.15)))
    mask = np.zeros((size, size), bool)
    for _ in range(count):
        window, weight = _shape_weight(rng, size, rng.uniform(0.14, 0.3) * size)
        stripes = _texture(rng, yy[window], xx[window], size, 0.08)
        colour = _saturated(rng)[None, None] + stripes[..., None]
        image[window] += weight[..., None] * (colour - image[window])
        mask[window] |= weight >= 0.5
    image += rng.normal(0, 0.02, image.shape)  # sensor noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def make_scenes(seed: int, count: int, size: int = 64,
                start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scenes `start .. start + count - 1` of stream `seed`: images (count, size, size, 3)
    and masks (count, size, size), uint8."""
    pairs = [make_scene(seed, index, size) for index in range(start, start + count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


PROG = "python -m keras_res2net.saliency.scenes"


def write_folder(out_dir: str, count: int, seed: int = 0, size: int = 128) -> str:
    """Scenes 0..count-1 of stream `seed` as a data set folder in the DUTS/ECSSD layout
    (`images/NNNNNN.jpg`, `masks/NNNNNN.png`). Written in a staging folder beside `out_dir`
    and renamed onto it at the end; an existing `out_dir` is refused."""
    import shutil
    import tempfile

    from PIL import Image

    from keras_res2net.cli_errors import UsageError, WorkError, os_error_message

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise UsageError(f"--out_dir {out_dir} already exists: choose a new folder.")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".partial-{os.path.basename(out_dir)}-", dir=parent)
    except OSError as err:
        raise WorkError(os_error_message(err, out_dir)) from err
    try:
        for folder in ("images", "masks"):
            os.mkdir(os.path.join(staging, folder))
        for index in range(count):
            image, mask = make_scene(seed, index, size)
            Image.fromarray(image).save(os.path.join(staging, "images", f"{index:06d}.jpg"),
                                        quality=95)
            Image.fromarray(mask).save(os.path.join(staging, "masks", f"{index:06d}.png"))
        os.replace(staging, out_dir)
    except OSError as err:
        raise WorkError(os_error_message(err, out_dir)) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    import argparse

    from keras_res2net.cli_errors import UsageError, report

    parser = argparse.ArgumentParser(prog=PROG, description="Write generated saliency scenes "
                                     "as a data set folder (images/ + masks/, DUTS layout).")
    parser.add_argument("--out_dir", required=True, help="a new folder")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        if args.count < 1 or args.size < 32:
            raise UsageError("--count must be at least 1 and --size at least 32.")
        folder = write_folder(args.out_dir, args.count, args.seed, args.size)
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, PROG, args.verbose)
    print(f"wrote {args.count} scenes (seed {args.seed}, {args.size} px) to {folder}: images/, "
          "masks/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

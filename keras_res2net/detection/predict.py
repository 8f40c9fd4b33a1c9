"""Run a trained detector on images: overlay PNGs and/or a COCO results file.

    python -m keras_res2net.detection.predict img1.jpg img2.png --checkpoint runs/shapes \
        --annotations data/shapes/val.json --out_dir predictions
    python -m keras_res2net.detection.predict data/shapes/val/*.png --checkpoint runs/shapes \
        --annotations data/shapes/val.json --results results.json

`--checkpoint` is a run folder (a train/coco.py `--model_dir`, or the output of
`keras_res2net.detection.convert`) holding `detector.weights.h5` and `experiment.json`, from
which the model is rebuilt as it was trained (overrides such as `--max_size` included), or a
`.weights.h5` file; `--experiment NAME` is only needed when there is no `experiment.json`.

Outputs:
  --out_dir DIR   one `<stem>.png` per image: masks, boxes and `name score` labels of the
                  detections with score >= --min_score. Default `predictions` when
                  --results is not given; with --results, PNGs only when --out_dir is given.
  --results FILE  every detection the model returns (no --min_score filter: COCO evaluation
                  ranks all of them), as a COCO results list: `image_id`, `file_name` (the
                  path as given), `category_id`, `bbox` [x, y, w, h] and `score`, plus
                  `segmentation` (RLE, counts as str) for mask models; boxes and masks in
                  original-image pixels. Written through a temporary file and a rename.

Ids: with `--annotations` (a COCO JSON of the model's categories), `category_id` is the
COCO id of each class (the categories sorted by id: class k is the k-th), the labels use the
category names, and `image_id` is the id of the image whose `file_name` matches the end of
the path; images the file does not name, and every image without --annotations, get their
0-based position on the command line. Without --annotations the categories are 1..K in the
model's class order (right for the synthetic sets, not for COCO's ids 1..90: pass
instances_val2017.json).

Checks come first, in this order, so errors come fast and nothing is written: the run
folder, weights and experiment (exit 2), --annotations (exit 2), then every image is opened
and decoded (exit 1, one line per unreadable image), all before the model is built. Errors
are one line without a traceback (--verbose shows it); --out_dir is created only once the
first PNG is ready.

The detector runs with its backbone's BatchNorm folded into the convolutions
(`detection.fold.fold_detector`: the same detections up to float32 rounding, faster; one line
on stderr gives the count); `--no-fold` runs it as built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128))
DEFAULT_OUT_DIR = "predictions"

if TYPE_CHECKING:
    from keras_res2net.detection.configs import ExperimentConfig


class PredictError(Exception):
    """A bad input, reported in one line with exit status `code` (2: options, run folder or
    annotations; 1: an image that cannot be read)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def draw_detections(image: np.ndarray, boxes, scores, classes, masks=None,
                    names=None, mask_alpha: float = 0.45) -> Image.Image:
    """Overlay masks (N, H, W) in a class colour, then boxes and `name score` labels."""
    canvas = np.asarray(image, dtype=np.float32).copy()
    colours = [PALETTE[(int(c) - 1) % len(PALETTE)] for c in classes]
    if masks is not None:
        for mask, colour in zip(masks, colours, strict=True):
            inside = np.asarray(mask) > 0
            canvas[inside] = (1 - mask_alpha) * canvas[inside] + mask_alpha * np.array(colour)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box, score, cls, colour in zip(boxes, scores, classes, colours, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        name = names.get(int(cls), f"class {int(cls)}") if names else f"class {int(cls)}"
        draw.text((x1 + 2, max(y1 - 11, 0)), f"{name} {float(score):.2f}", fill=colour)
    return picture


@dataclasses.dataclass
class Annotations:
    """What predict takes from a COCO JSON: the COCO id and name of each contiguous class
    1..K (categories sorted by id) and the image ids by `file_name`."""

    category_ids: list[int]
    names: dict[int, str]
    image_ids: dict[str, int]

    def image_id(self, path: str) -> int | None:
        """The id of the image whose `file_name` is the longest tail of `path` (so both
        `000001.png` and `val2017/000001.png` entries match `data/val2017/000001.png`)."""
        parts = Path(path).parts
        for start in range(len(parts)):
            found = self.image_ids.get("/".join(parts[start:]))
            if found is not None:
                return found
        return None


def read_annotations(path, num_classes: int) -> Annotations:
    """The categories and image names of a COCO JSON; `PredictError` (exit 2) if it cannot
    be read or has other than `num_classes` categories."""
    try:
        data = json.loads(Path(path).read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        category_ids = [int(c["id"]) for c in categories]
        names = {index + 1: str(c.get("name", c["id"])) for index, c in enumerate(categories)}
        image_ids = {str(im["file_name"]): int(im["id"]) for im in data.get("images", [])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PredictError(f"--annotations {path}: not a readable COCO JSON with categories "
                           f"({type(error).__name__}: {error}).") from error
    if len(category_ids) != num_classes:
        raise PredictError(f"--annotations {path}: {len(category_ids)} categories, but the "
                           f"model has {num_classes} classes.")
    return Annotations(category_ids, names, image_ids)


def load_image(path) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_images(paths) -> None:
    """Open and decode every image; `PredictError` (exit 1) naming each one that fails."""
    problems = []
    for path in paths:
        try:
            load_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = ("no such file" if isinstance(error, FileNotFoundError)
                      else f"{type(error).__name__}: {error}")
            problems.append(f"cannot read image {path} ({reason})")
    if problems:
        raise PredictError("\n".join(problems), code=1)


def folded_for_inference(model):
    """`model` with its backbone BatchNorm folded; the count (or why nothing folded) goes to
    stderr as one line, so stdout stays the per-image lines."""
    import warnings

    from keras_res2net.detection.fold import fold_detector

    def note(line: str) -> None:
        print(f"predict: {line}", file=sys.stderr, flush=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Nothing trains here: whatever the weights file held is final.
        folded = fold_detector(model, allow_training=True, log=note)
    for warning in caught:
        note(f"note: {warning.message}")
    return folded


@dataclasses.dataclass
class PredictRun:
    """What `predict` did: the config it rebuilt, the COCO records (all detections) and the
    files it wrote."""

    config: ExperimentConfig
    records: list[dict]
    pngs: list[Path]
    results: Path | None


def predict(paths, checkpoint, *, experiment: str | None = None, out_dir=None,
            results=None, annotations=None, min_score: float = 0.3,
            fold: bool = True) -> PredictRun:
    """Detect on each image; write `<out_dir>/<stem>.png` (if `out_dir`) and the COCO results
    list to `results` (if given). Raises `PredictError` for bad inputs before any work (see
    the module doc for the checks and id rules). `fold=True` runs the detector with its
    backbone's BatchNorm folded into the convolutions (`detection.fold.fold_detector`: the
    same detections, faster)."""
    from keras_res2net.detection import experiment_io
    from keras_res2net.detection.evaluation import coco_results

    paths = [str(p) for p in paths]
    try:
        config, weights = experiment_io.open_run(checkpoint, experiment)
    except (FileNotFoundError, ValueError) as error:  # each message names the folder
        raise PredictError(str(error)) from error
    if results is not None and Path(results).is_dir():
        raise PredictError(f"--results {results}: a folder; name the JSON file to write.")
    num_classes = config.model.num_classes
    notes = Annotations(list(range(1, num_classes + 1)), {}, {})
    if annotations is not None:
        notes = read_annotations(annotations, num_classes)
    check_images(paths)

    import tensorflow as tf

    from keras_res2net.detection.data.pipeline import resize_and_pad
    from keras_res2net.detection.task import DetectionTask

    task = DetectionTask(config)
    model = task.build_model()
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as error:
        raise PredictError(f"{weights}: these weights do not fit the experiment's model "
                           f"({type(error).__name__}: {error}).") from error
    if fold:
        model = folded_for_inference(model)
    unnamed = [p for p in paths if notes.image_id(p) is None] if annotations else []
    if unnamed and len(unnamed) < len(paths):
        print(f"predict: note: {len(unnamed)} of the {len(paths)} images are not in "
              f"{annotations}; their image_id is their position on the command line.",
              file=sys.stderr)
    records, pngs = [], []
    for position, path in enumerate(paths):
        image = load_image(path)
        image_id = notes.image_id(path)
        image_id = position if image_id is None else image_id
        example = {"image": image, "boxes": np.zeros((0, 4), np.float32),
                   "classes": np.zeros((0,), np.int32),
                   "masks": np.zeros((0, *image.shape[:2]), np.uint8),
                   "image_id": np.int64(image_id)}
        inputs = resize_and_pad(example, config.data.max_size, config.data.size_divisor, None)
        batch = {k: tf.expand_dims(v, 0) for k, v in inputs.items()}
        det = task.postprocess(task.validation_step(batch, model), batch)[0]
        masks = det.get("masks")
        for record in coco_results(image_id, det["boxes"], det["scores"], det["classes"],
                                   notes.category_ids, masks):
            records.append({"image_id": record.pop("image_id"), "file_name": path, **record})
        keep = det["scores"] >= min_score
        line = f"{path}: {len(det['scores'])} detections, {int(keep.sum())} >= {min_score}"
        if out_dir is not None:
            picture = draw_detections(image, det["boxes"][keep], det["scores"][keep],
                                      det["classes"][keep],
                                      None if masks is None else masks[keep], notes.names)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            target = Path(out_dir) / f"{Path(path).stem}.png"
            picture.save(target)
            pngs.append(target)
            line += f" -> {target}"
        print(line, flush=True)
    written = None
    if results is not None:
        written = experiment_io.write_json(results, records)
        print(f"{len(records)} detections of {len(paths)} images -> {written} (COCO results)",
              flush=True)
    return PredictRun(config, records, pngs, written)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_res2net.detection.predict", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder with detector.weights.h5 (+ experiment.json), or a "
                        ".weights.h5 file")
    parser.add_argument("--experiment", default=None,
                        help="registered experiment; only when the folder has no "
                        "experiment.json")
    parser.add_argument("--out_dir", default=None,
                        help=f"overlay PNGs here (default {DEFAULT_OUT_DIR} unless --results "
                        "is given)")
    parser.add_argument("--results", default=None,
                        help="write every detection as a COCO results JSON list")
    parser.add_argument("--annotations", default=None,
                        help="COCO JSON of the model's categories: COCO category ids, names "
                        "and image ids (without it: categories 1..K, image ids = positions)")
    parser.add_argument("--min_score", type=float, default=0.3,
                        help="PNG overlays only: draw detections with at least this score")
    parser.add_argument("--no-fold", action="store_true",
                        help="run the detector as built, backbone BatchNorm not folded into "
                        "the convolutions (default: folded, same detections, faster)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0, 1 for an unreadable image, 2 for bad
    options, run folder or annotations)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    out_dir = args.out_dir
    if out_dir is None and args.results is None:
        out_dir = DEFAULT_OUT_DIR
    try:
        predict(args.images, args.checkpoint, experiment=args.experiment, out_dir=out_dir,
                results=args.results, annotations=args.annotations, min_score=args.min_score,
                fold=not args.no_fold)
    except PredictError as error:
        if args.verbose:
            traceback.print_exc()
        for line in str(error).splitlines():
            print(f"predict: error: {line}", file=sys.stderr)
        return error.code
    return 0


if __name__ == "__main__":
    sys.exit(main())

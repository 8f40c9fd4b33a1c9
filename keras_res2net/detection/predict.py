"""Run a trained detector on images and write PNGs with boxes, labels and masks drawn.

    python -m keras_res2net.detection.predict img1.jpg img2.png \
        --experiment mask_rcnn_res2net50_fpn_synthetic --checkpoint runs/shapes \
        --out_dir predictions --annotations data/shapes/val.json

`--checkpoint` is a `model_dir` written by train/coco.py (or the weights file itself);
`--annotations` (any COCO JSON of the same categories) supplies the class names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128))


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


def _class_names(annotations: str | None) -> dict:
    if not annotations:
        return {}
    categories = sorted(json.loads(Path(annotations).read_text())["categories"],
                        key=lambda c: c["id"])
    return {index + 1: c["name"] for index, c in enumerate(categories)}


def predict(paths, experiment: str, checkpoint: str, out_dir: str,
            annotations: str | None = None, min_score: float = 0.3) -> list[Path]:
    """Detect on each image and write `<out_dir>/<stem>.png`; returns the written paths."""
    import tensorflow as tf

    from keras_res2net.detection import configs
    from keras_res2net.detection.data.pipeline import resize_and_pad
    from keras_res2net.detection.task import DetectionTask
    from keras_res2net.detection.trainer import WEIGHTS

    config = configs.get_experiment(experiment)
    task = DetectionTask(config)
    model = task.build_model()
    weights = Path(checkpoint)
    model.load_weights(weights / WEIGHTS if weights.is_dir() else weights)
    names = _class_names(annotations)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        example = {"image": image, "boxes": np.zeros((0, 4), np.float32),
                   "classes": np.zeros((0,), np.int32),
                   "masks": np.zeros((0, *image.shape[:2]), np.uint8),
                   "image_id": np.int64(0)}
        inputs = resize_and_pad(example, config.data.max_size, config.data.size_divisor, None)
        batch = {k: tf.expand_dims(v, 0) for k, v in inputs.items()}
        det = task.postprocess(model(batch["images"]), batch)[0]
        keep = det["scores"] >= min_score
        picture = draw_detections(image, det["boxes"][keep], det["scores"][keep],
                                  det["classes"][keep],
                                  det["masks"][keep] if "masks" in det else None, names)
        target = out / f"{Path(path).stem}.png"
        picture.save(target)
        written.append(target)
        print(f"{path}: {int(keep.sum())} detections -> {target}")
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out_dir", default="predictions")
    parser.add_argument("--annotations", default=None)
    parser.add_argument("--min_score", type=float, default=0.3)
    args = parser.parse_args(argv)
    predict(args.images, args.experiment, args.checkpoint, args.out_dir, args.annotations,
            args.min_score)


if __name__ == "__main__":
    main()

"""Peak memory and speed of the COCO training input pipeline on COCO-sized images.

Writes (once) a COCO set of `--images` 1333x800 JPEGs with `--instances` polygon objects
each, then pulls `--batches` training batches of `--batch_size` from
`keras_res2net.detection.data.pipeline.build_dataset` and prints: the bytes of one batch,
the resident memory before and at the peak (`ru_maxrss`), the peak of Python-side
allocations (tracemalloc: NumPy arrays, not TensorFlow's) and seconds per batch.

Run it with this checkout, and with an older one on PYTHONPATH to compare (the batch keys
differ, so only totals are printed):

    PYTHONPATH=. python benchmarks/coco_input_memory.py --data_dir /tmp/coco_mem
    PYTHONPATH=/path/to/old python benchmarks/coco_input_memory.py --data_dir /tmp/coco_mem
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np


def write_set(root: Path, images: int, instances: int, seed: int = 0) -> Path:
    """`images` smooth-noise 1333x800 JPEGs with `instances` random polygons each."""
    from PIL import Image

    path = root / "instances.json"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    height, width = 800, 1333
    records, annotations = [], []
    for index in range(images):
        coarse = rng.uniform(0, 255, (8, 12, 3)).astype(np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        name = f"{index + 1:06d}.jpg"
        picture.save(root / "images" / name, quality=90)
        records.append({"id": index + 1, "file_name": name, "height": height,
                        "width": width})
        for _ in range(instances):
            w, h = rng.uniform(20, 400), rng.uniform(20, 400)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            xs = x + w / 2 * (1 + np.cos(angles) * rng.uniform(0.6, 1.0, 12))
            ys = y + h / 2 * (1 + np.sin(angles) * rng.uniform(0.6, 1.0, 12))
            polygon = np.stack([xs, ys], 1).ravel().round(2).tolist()
            box = [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": 1, "bbox": box, "iscrowd": 0,
                                "area": box[2] * box[3], "segmentation": [polygon]})
    path.write_text(json.dumps({"images": records, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def target_agreement(dataset, size: int = 112, jitter: float = 0.1, seed: int = 0) -> str:
    """How often 28x28 mask targets from `size` crops differ from those of full-image masks
    (mmdetection's), for RoIs around each ground-truth box of the first image."""
    from keras_res2net.detection.data.instance_masks import crop_masks_to_boxes
    from keras_res2net.detection.modeling.roi_align import crop_box_masks, crop_masks

    record = dataset.records[0]
    full, boxes = record.load_masks(), record.boxes
    crops = crop_masks_to_boxes(full, boxes, size).numpy()
    rng = np.random.default_rng(seed)
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    rois = (boxes + rng.uniform(-jitter, jitter, boxes.shape) * wh).astype(np.float32)
    index = np.arange(len(boxes))[None]
    ours = crop_box_masks(crops[None], boxes[None], rois[None], index,
                          output_size=28).numpy() >= 0.5
    reference = crop_masks(full[None], rois[None], index, output_size=28).numpy() >= 0.5
    return (f"28x28 targets from {size}x{size} crops differ from full-mask targets in "
            f"{np.mean(ours != reference) * 100:.2f}% of pixels ({len(boxes)} RoIs, boxes "
            f"jittered by up to {jitter:.0%})")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="/tmp/coco_input_memory")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--agreement", action="store_true",
                        help="also compare mask targets from crops with full-mask targets")
    args = parser.parse_args()
    root = Path(args.data_dir)
    json_path = write_set(root, args.images, args.instances)

    import tensorflow as tf

    from keras_res2net.detection.data.coco import load_coco
    from keras_res2net.detection.data.pipeline import build_dataset

    tf.constant(1.0) + 1.0  # TensorFlow's own start-up memory before the baseline
    dataset = load_coco(json_path, root / "images")
    before = rss_mb()
    tracemalloc.start()
    batches = build_dataset(dataset, batch_size=args.batch_size, max_size=(1333, 800),
                            max_instances=args.instances, training=True, seed=0)
    iterator = iter(batches)
    start = time.perf_counter()
    batch = next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches - 1):
        batch = next(iterator)
    per_batch = (time.perf_counter() - start) / max(args.batches - 1, 1)
    _, python_peak = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {key: value.numpy().nbytes / 2**20 for key, value in batch.items()}
    print(f"batch of {args.batch_size} 1333x800 images, {args.instances} instances each: "
          f"{sum(sizes.values()):.1f} MB ("
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(sizes.items(), key=lambda i: -i[1])
                      if v >= 0.05) + ")")
    print(f"RSS before the pipeline {before:.0f} MB, peak {peak:.0f} MB "
          f"(+{peak - before:.0f} MB); Python allocations peak {python_peak / 2**20:.1f} MB")
    print(f"first batch {first:.2f} s, then {per_batch:.2f} s per batch")
    if args.agreement:
        print(target_agreement(dataset))


if __name__ == "__main__":
    main()

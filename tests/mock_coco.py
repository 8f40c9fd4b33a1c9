"""COCO test data: a consistent TFDS coco/2017 mock, and small generated COCO JSON sets.

`coco_examples` is for `tfds.testing.mock_data(as_dataset_fn=coco_examples)`: the default
mock draws each object field with its own length; these examples have `bbox`, `label` and
`is_crowd` of one length, as real COCO does. `write_coco_set` writes a few JPEGs with
polygon and RLE instances. Shared by the detection tests.
"""

import numpy as np
import tensorflow as tf


def coco_examples(*args, **kwargs):
    del args, kwargs
    image = np.zeros((2, 40, 80, 3), np.uint8)
    return tf.data.Dataset.from_tensor_slices({
        "image": image,
        "image/id": np.array([11, 12], np.int64),
        "image/filename": np.array([b"a.jpg", b"b.jpg"]),
        "objects": {
            "bbox": np.array([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]],
                              [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]], np.float32),
            "label": np.array([[0, 79], [3, 4]], np.int64),
            "is_crowd": np.array([[False, True], [False, False]]),
            "area": np.array([[1, 1], [1, 1]], np.int64),
            "id": np.array([[1, 2], [3, 4]], np.int64),
        },
    })


def write_coco_set(root, sizes=((48, 80), (80, 48), (64, 64)), objects: int = 2,
                   seed: int = 0, file_format: str = "JPEG"):
    """A small COCO instances set of random JPEGs (height, width in `sizes`: landscape and
    portrait) under `root/images`, `objects` per image alternating polygon and RLE
    segmentations; returns (json path, image folder, the full masks per image)."""
    import json
    from pathlib import Path

    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    root = Path(root)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, all_masks = [], [], []
    for index, (height, width) in enumerate(sizes):
        image_id = index + 1
        name = f"{image_id:04d}.{'jpg' if file_format == 'JPEG' else 'png'}"
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, format=file_format)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        masks = []
        for k in range(objects):
            x0, y0 = rng.uniform(2, width / 2), rng.uniform(2, height / 2)
            x1, y1 = x0 + rng.uniform(8, width / 2 - 2), y0 + rng.uniform(8, height / 2 - 2)
            polygon = [x0, y0, x1, y0 + 3, x1 - 2, y1, x0 + 4, y1 - 1]
            canvas = Image.new("L", (width, height), 0)
            ImageDraw.Draw(canvas).polygon(polygon, fill=1)
            if k % 2 == 0:
                segmentation = [polygon]
                mask = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width))[..., 0]
            else:
                mask = np.asarray(canvas, np.uint8)
                segmentation = mask_utils.encode(np.asfortranarray(mask))
                segmentation["counts"] = segmentation["counts"].decode("ascii")
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                   float(ys.max() - ys.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1 + k % 2, "bbox": box, "iscrowd": 0,
                                "area": int(mask.sum()), "segmentation": segmentation})
            masks.append(mask)
        all_masks.append(np.stack(masks))
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path, folder, all_masks

"""COCO-format JSON + image folder loader that refuses bad annotations loudly.

`load_coco` checks the whole file up front: every annotation must reference a listed image
and category, have a finite box, and a segmentation that decodes to the image's size (boxes
outside the image or under 1 px are dropped, as mmdetection does); every image must exist on
disk. Any violation raises `ValueError` naming the image and annotation. Optional semantic
label maps (COCO-Stuff "stuffthingmaps", one `<image stem>.png` per image) are checked the
same way: present, single-channel, and of
the image's size. Crowd annotations (`iscrowd=1`) are kept apart as
`crowd_boxes` (mmdetection ignores them in training; pycocotools uses them in evaluation).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_res2net.detection.data.mmdet_rules import annotation_box, keep_training_image

SEMANTIC_IGNORE = 255  # the label of unlabelled pixels in COCO-Stuff maps (and their padding)


@dataclasses.dataclass
class ImageRecord:
    """One image's annotations: boxes xyxy in pixels, contiguous classes 1..K, segmentations."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    segmentations: list
    crowd_boxes: np.ndarray
    semantic_path: Path | None = None  # (H, W) uint8 label map, 255 = ignore

    def load_image(self) -> np.ndarray:
        with Image.open(self.path) as image:
            return np.asarray(image.convert("RGB"))

    def load_masks(self) -> np.ndarray:
        """(N, H, W) uint8 instance masks."""
        if not self.segmentations:
            return np.zeros((0, self.height, self.width), dtype=np.uint8)
        return np.stack([segmentation_to_mask(s, self.height, self.width)
                         for s in self.segmentations]).astype(np.uint8)

    def load_semantic(self) -> np.ndarray:
        """(H, W) uint8 semantic classes (255 = ignore); palette PNGs give their indices."""
        if self.semantic_path is None:
            raise ValueError(f"image {self.image_id} ({self.path.name}) has no semantic map.")
        with Image.open(self.semantic_path) as label_map:
            return np.asarray(label_map, dtype=np.uint8)


@dataclasses.dataclass
class CocoDataset:
    coco: COCO
    records: list
    category_ids: list  # contiguous class k (1-based) is category_ids[k - 1]


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decode a polygon list, uncompressed or compressed RLE into an (H, W) mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def _check_annotation(ann: dict, image: dict, categories: set, needs_masks: bool) -> str | None:
    """The problem with one annotation, or None."""
    if ann.get("category_id") not in categories:
        return f"category_id {ann.get('category_id')!r} is not in 'categories'"
    box = ann.get("bbox")
    if not isinstance(box, list | tuple) or len(box) != 4:
        return f"bbox {box!r} is not [x, y, width, height]"
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        return f"bbox {box!r} is not numeric"
    if not all(math.isfinite(v) for v in values):
        return f"bbox {box!r} is not finite"
    if needs_masks:
        segmentation = ann.get("segmentation")
        if not segmentation:
            return "has no segmentation"
        if isinstance(segmentation, dict) and list(segmentation.get("size", [])) != [
                image["height"], image["width"]]:
            return (f"segmentation size {segmentation.get('size')!r} differs from the image "
                    f"size [{image['height']}, {image['width']}]")
        if isinstance(segmentation, list) and any(len(p) < 6 or len(p) % 2 for p in
                                                  segmentation):
            return "has a polygon with fewer than 3 points or an odd coordinate count"
    return None


def _semantic_problem(path: Path, image: dict) -> str | None:
    """The problem with one semantic label map (read from its header only), or None."""
    if not path.is_file():
        return f"has no semantic map {path.name} in {path.parent}"
    with Image.open(path) as label_map:
        mode, (width, height) = label_map.mode, label_map.size
    if mode not in ("L", "P"):
        return f"has a semantic map {path.name} of mode {mode!r}, not a single-channel 'L' or 'P'"
    if (height, width) != (image["height"], image["width"]):
        return (f"has a {width}x{height} semantic map {path.name}, but the image is "
                f"{image['width']}x{image['height']}")
    return None


def load_coco(json_path, image_dir, *, needs_masks: bool = True,
              semantic_dir=None, filter_empty_gt: bool = False,
              min_size: int = 0) -> CocoDataset:
    """Read and validate a COCO instances file; images are looked up in `image_dir`.

    With `semantic_dir`, every image gets the label map `semantic_dir/<file stem>.png`.
    Annotations mmdetection drops (`mmdet_rules.annotation_box`) are left out; for training,
    `filter_empty_gt` and `min_size` leave out images as mmdetection's `filter_cfg`
    (`mmdet_rules.keep_training_image`).
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    semantic_dir = None if semantic_dir is None else Path(semantic_dir)
    if semantic_dir is not None and not semantic_dir.is_dir():
        raise FileNotFoundError(f"semantic map folder {semantic_dir} does not exist.")
    if not json_path.is_file():
        raise FileNotFoundError(f"annotation file {json_path} does not exist.")
    coco = COCO(str(json_path))
    category_ids = sorted(coco.getCatIds())
    if not category_ids:
        raise ValueError(f"{json_path}: no categories.")
    contiguous = {cat: index + 1 for index, cat in enumerate(category_ids)}
    for ann in coco.dataset.get("annotations", []):
        if ann.get("image_id") not in coco.imgs:
            raise ValueError(f"{json_path}: annotation {ann.get('id')!r} refers to image_id "
                             f"{ann.get('image_id')!r}, which is not in 'images'.")
    records = []
    for image_id in sorted(coco.imgs):
        image = coco.imgs[image_id]
        if not keep_training_image(len(coco.imgToAnns.get(image_id, [])), image["width"],
                                   image["height"], filter_empty_gt=filter_empty_gt,
                                   min_size=min_size):
            continue
        path = image_dir / image["file_name"]
        if not path.is_file():
            raise ValueError(f"{json_path}: image {image_id} ({image['file_name']}) is missing "
                             f"from {image_dir}.")
        semantic_path = None
        if semantic_dir is not None:
            semantic_path = semantic_dir / f"{Path(image['file_name']).stem}.png"
            problem = _semantic_problem(semantic_path, image)
            if problem:
                raise ValueError(f"{json_path}: image {image_id} ({image['file_name']}) "
                                 f"{problem}.")
        boxes, classes, segmentations, crowd = [], [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            problem = _check_annotation(ann, image, set(contiguous), needs_masks)
            if problem:
                raise ValueError(f"{json_path}: annotation {ann.get('id')!r} of image "
                                 f"{image_id} ({image['file_name']}) {problem}.")
            box = annotation_box(ann["bbox"], image["width"], image["height"],
                                 ann.get("area"))
            if box is None or ann.get("ignore", False):  # as mmdetection's parse_data_info
                continue
            if ann.get("iscrowd", 0):
                crowd.append(box)
                continue
            boxes.append(box)
            classes.append(contiguous[ann["category_id"]])
            segmentations.append(ann.get("segmentation"))
        records.append(ImageRecord(
            image_id=image_id, path=path, height=int(image["height"]),
            width=int(image["width"]), boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            classes=np.asarray(classes, np.int32), segmentations=segmentations,
            crowd_boxes=np.asarray(crowd, np.float32).reshape(-1, 4),
            semantic_path=semantic_path))
    return CocoDataset(coco=coco, records=records, category_ids=category_ids)

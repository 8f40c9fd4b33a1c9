"""COCO-format JSON + image folder loader that refuses bad annotations loudly.

`read_annotation_file` checks the file's structure before pycocotools indexes it: invalid JSON
is reported with its line and column, a missing or empty `images`, `annotations` or
`categories` list by name, and a record with a missing or non-numeric field by its id (all as
`CocoFormatError`, a `ValueError`). `load_coco` then checks the contents: every annotation
must reference a listed image and category, have a finite box, and a segmentation that decodes
to the image's size (boxes outside the image or under 1 px are dropped, as mmdetection does);
every image must exist on disk. Any violation raises `ValueError` naming the image and
annotation. Whether the images decode is `image_check`'s job (one parallel pass, before
training). Optional semantic label maps (COCO-Stuff "stuffthingmaps", one `<image stem>.png`
per image) are checked the same way: present, single-channel, and of the image's size. Crowd
annotations (`iscrowd=1`) are kept apart as `crowd_boxes` (mmdetection ignores them in
training; pycocotools uses them in evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from numbers import Real
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

    def mask_rles(self) -> list[bytes]:
        """Each instance's segmentation as compressed RLE counts (pycocotools' string form,
        decoded in tf.data by `masks.decode_rle`); b"" where an instance has none."""
        return [segmentation_to_rle(s, self.height, self.width)["counts"] if s else b""
                for s in self.segmentations]

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
    json_path: Path | None = None  # the annotation file, for messages


class CocoFormatError(ValueError):
    """An annotation file that is not valid COCO JSON (exit status 2 in the CLIs)."""


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_records(json_path: Path, key: str, items: list, fields: dict) -> None:
    """Every record of `items` (the file's `key` list) is an object whose `fields` have the
    given types; the first that is not is named by its id (or its position)."""
    singular = key[:-1] if key != "categories" else "category"
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise CocoFormatError(f"{json_path}: {singular} #{position + 1} in {key!r} is a "
                                  f"{type(item).__name__}, not an object.")
        name = (f"{singular} {item['id']!r}" if "id" in item
                else f"{singular} #{position + 1} in {key!r}")
        for field, (check, expected) in fields.items():
            if field not in item:
                raise CocoFormatError(f"{json_path}: {name} has no {field!r}.")
            if not check(item[field]):
                raise CocoFormatError(f"{json_path}: {name} has {field} {item[field]!r}, "
                                      f"{expected}.")


def _is_box(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


_INTEGER = (lambda v: isinstance(v, int) and not isinstance(v, bool), "not an integer")
_RECORD_FIELDS = {
    "images": {"id": _INTEGER, "file_name": (lambda v: isinstance(v, str) and v != "",
                                             "not a file name"),
               "height": (lambda v: _INTEGER[0](v) and v > 0, "not a positive integer"),
               "width": (lambda v: _INTEGER[0](v) and v > 0, "not a positive integer")},
    "annotations": {"id": _INTEGER, "image_id": _INTEGER, "category_id": _INTEGER,
                    "bbox": (_is_box, "not [x, y, width, height] of 4 numbers")},
    "categories": {"id": _INTEGER},
}


def read_annotation_file(json_path) -> dict:
    """The parsed COCO instances file, its structure checked (see the module doc)."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"annotation file {json_path} does not exist.")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise CocoFormatError(f"{json_path}: invalid JSON at line {error.lineno}, column "
                              f"{error.colno}: {error.msg}.") from None
    except UnicodeDecodeError as error:
        raise CocoFormatError(f"{json_path}: not UTF-8 text (byte {error.start}); is it a "
                              "COCO JSON file?") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{json_path}: the top level is a {type(data).__name__}, not "
                              "an object with 'images', 'annotations' and 'categories'.")
    missing = [key for key in _RECORD_FIELDS if key not in data]
    if missing:
        raise CocoFormatError(f"{json_path}: no {' or '.join(map(repr, missing))} list; a COCO "
                              "instances file has 'images', 'annotations' and 'categories'.")
    for key, fields in _RECORD_FIELDS.items():
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{json_path}: {key!r} is a {type(data[key]).__name__}, "
                                  "not a list.")
        if not data[key]:
            raise CocoFormatError(f"{json_path}: {key!r} is empty; an annotation set needs at "
                                  f"least one image, category and annotation.")
        _check_records(json_path, key, data[key], fields)
    return data


def coco_index(data: dict) -> COCO:
    """A pycocotools `COCO` over already parsed `data` (without its progress prints)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """A polygon list, uncompressed or compressed RLE as compressed RLE (counts in bytes)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decode a polygon list, uncompressed or compressed RLE into an (H, W) mask."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width))


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
    coco = coco_index(read_annotation_file(json_path))
    category_ids = sorted(coco.getCatIds())
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
    return CocoDataset(coco=coco, records=records, category_ids=category_ids,
                       json_path=json_path)

"""COCO evaluation with pycocotools: the 12 standard numbers for boxes and masks.

`CocoEvaluator` collects detections in original-image coordinates (boxes xyxy, contiguous
classes 1..K, optional full-image binary masks), converts them to COCO results (xywh boxes,
RLE masks) and runs `COCOeval`, which prints the summary table. `evaluator="faster"` runs the
same evaluation with faster-coco-eval's C++ `COCOeval_faster` instead (an opt-in accelerator,
`pip install faster-coco-eval`; `tests/detection/test_evaluation.py` checks it gives
pycocotools' 12 numbers).
"""

from __future__ import annotations

import copy

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

EVALUATORS = ("pycocotools", "faster")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_results(image_id: int, boxes, scores, classes, category_ids, masks=None
                 ) -> list[dict]:
    """COCO results records of one image's detections: `bbox` [x, y, w, h] from the xyxy
    `boxes`, `category_id` the COCO id of each contiguous class 1..K (`category_ids[k - 1]`),
    and, with `masks` (N, H, W) binary, `segmentation` as RLE with `counts` a str (JSON-ready).
    Shared by the evaluator and `predict --results`, so both write the same records."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    records = []
    for index, (box, score, cls) in enumerate(zip(boxes, scores, classes, strict=True)):
        record = {"image_id": int(image_id),
                  "category_id": int(category_ids[int(cls) - 1]),
                  "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                           float(box[3] - box[1])],
                  "score": float(score)}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(masks[index], np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            record["segmentation"] = rle
        records.append(record)
    return records


class CocoEvaluator:
    """Accumulates detections for `coco` (a pycocotools COCO) and evaluates them."""

    def __init__(self, coco: COCO, category_ids, iou_types=("bbox", "segm"),
                 evaluator: str = "pycocotools"):
        if evaluator not in EVALUATORS:
            raise ValueError(f"evaluator must be one of {', '.join(EVALUATORS)}; got "
                             f"{evaluator!r}.")
        if evaluator == "faster":
            try:
                import faster_coco_eval  # noqa: F401
            except ImportError:
                raise ImportError("evaluator 'faster' needs faster-coco-eval: pip install "
                                  "'keras-res2net[detection]' or faster-coco-eval.") from None
        self.evaluator = evaluator
        self.coco = coco
        self.category_ids = list(category_ids)
        self.iou_types = tuple(iou_types)
        self.results: list[dict] = []
        self.image_ids: set[int] = set()

    def add(self, image_id: int, boxes, scores, classes, masks=None) -> None:
        """Detections of one image; `classes` are contiguous 1..K, `masks` (N, H, W) binary."""
        self.image_ids.add(int(image_id))
        self.results.extend(coco_results(image_id, boxes, scores, classes, self.category_ids,
                                         masks))

    def evaluate(self, verbose: bool = True) -> dict:
        """`{"bbox": {"AP": ..., ...}, "segm": {...}}`; printing COCOeval's 12-line summary."""
        metrics = {}
        image_ids = sorted(self.image_ids) or sorted(self.coco.getImgIds())
        for iou_type in self.iou_types:
            results = self.results
            if iou_type == "segm":
                results = [r for r in results if "segmentation" in r]
                if not results and self.results:
                    continue
            if not results:
                metrics[iou_type] = dict.fromkeys(STAT_NAMES, 0.0)
                continue
            # Each type keeps only its own geometry, so loadRes takes the area from it
            # (the mask area for "segm"), as detectron2 does.
            drop = "bbox" if iou_type == "segm" else "segmentation"
            results = [{k: v for k, v in r.items() if k != drop} for r in results]
            evaluator = self._cocoeval(results, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            if verbose:
                print(f"COCO {iou_type} evaluation:")
            evaluator.summarize()
            metrics[iou_type] = {name: float(value)
                                 for name, value in zip(STAT_NAMES, evaluator.stats,
                                                        strict=True)}
        return metrics

    def _cocoeval(self, results: list[dict], iou_type: str):
        """A `COCOeval` (pycocotools) or `COCOeval_faster` on ground truth and `results`."""
        if self.evaluator == "faster":
            import faster_coco_eval

            if not hasattr(self, "_faster_gt"):
                self._faster_gt = faster_coco_eval.COCO(self.coco.dataset, use_deepcopy=True)
            detections = self._faster_gt.loadRes(copy.deepcopy(results))
            return faster_coco_eval.COCOeval_faster(self._faster_gt, detections, iou_type,
                                                    print_function=print)
        return COCOeval(self.coco, self.coco.loadRes(results), iou_type)

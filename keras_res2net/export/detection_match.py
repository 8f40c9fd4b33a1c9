"""The fp16 check of a static detector artifact: detections matched by class and IoU, near-ties
excused, every detection with a clear margin required to agree.

Why the float32 check cannot judge fp16: float16 moves scores by up to ~1e-2 (`Fp16Bound`), so
two overlapping boxes of one class whose scores are that close may swap in NMS (the artifact
keeps the other box: a "box 26 px off" in a matching by position), a score that close to the
threshold or to the `max_detections` cut may cross it, and each such change can let through a
box that the lost one had suppressed. None of this is an error of the artifact. What fp16 must
keep is every decision with a margin larger than its error. So, per image:

1. Match the artifact's detections to the reference's one to one: same class, the greatest
   total IoU (Hungarian); a pair counts at IoU >= `match_iou`.
2. A detection is *near-tied* when its score is within `score` of the floor (the score
   threshold, or the lowest kept score when `max_detections` are kept), of an unmatched
   detection of the same class on the other side overlapping it by more than the NMS IoU
   (its NMS competitor, kept there instead), or of another detection of the same class on
   its own side (its neighbour in score order: the RPN's top-k and NMS pick the proposals
   behind the detections by score order over the whole image, and the proposals they
   passed over are not in the output, so a near-tie there shows only as near-tied scores).
   Unmatched detections overlapping a near-tied unmatched one by more than the NMS IoU are
   near-tied too (what the swapped box had suppressed), repeated to a fixed point.
3. Every detection that is not near-tied must be matched, on both sides; matched pairs must
   agree within the bounds (boxes relative to their size, scores, pasted masks); and
   matched / max(reference, artifact) detections >= `matched_fraction` bounds the rest.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Fp16Bound:
    """What an fp16 artifact must keep (module doc); the values are justified in
    docs/detector-export.md and measured in its table."""

    score: float = 0.02  # fp16 score error: margins above it must not change a decision
    match_iou: float = 0.9  # a matched pair's box IoU
    box_relative: float = 0.02  # matched pairs: box max|diff| <= this x the box's long side
    matched_fraction: float = 0.9  # matched / max(reference, artifact) detections
    mask_iou: float = 0.9  # mean IoU of the matched pairs' pasted masks (at 0.5)

    def describe(self) -> str:
        return (f"every detection with a score margin > {self.score:g} matched (class, IoU >= "
                f"{self.match_iou:g}), >= {self.matched_fraction:.0%} matched overall, boxes "
                f"|diff| <= {self.box_relative:g} x box size, scores |diff| <= {self.score:g}, "
                f"mask IoU mean >= {self.mask_iou:g}")


FP16_BOUND = Fp16Bound()


@dataclasses.dataclass
class Fp16Match:
    """What the fp16 check measured over every check image."""

    counts: tuple[list, list] = ((), ())  # (artifact, reference) detections per image
    matched: int = 0
    total: int = 0  # sum over images of max(reference, artifact) detections
    near_tied: int = 0  # detections (both sides) excused as near-tied
    lost: list = dataclasses.field(default_factory=list)  # unmatched detections with a margin
    box_diff: float = 0.0  # pixels, matched pairs
    box_relative: float = 0.0  # box_diff over the box's long side, largest
    score_diff: float = 0.0
    mask_iou_mean: float = 1.0
    mask_iou_min: float = 1.0
    problem: str = ""

    @property
    def fraction(self) -> float:
        return self.matched / self.total if self.total else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes `a` (n, 4) and `b` (m, 4)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _floor(scores: np.ndarray, threshold: float, max_detections: int) -> float:
    """The score a detection must stay above to be kept: the threshold, or the lowest kept
    score when the `max_detections` cut was reached."""
    if len(scores) >= max_detections:
        return max(threshold, float(scores.min()))
    return threshold


def _neighbour_tied(values: dict, score: float) -> np.ndarray:
    """Detections with another same-class detection of their own side whose score is within
    `score`."""
    near = ((values["classes"][:, None] == values["classes"][None])
            & (np.abs(values["scores"][:, None] - values["scores"][None]) <= score))
    np.fill_diagonal(near, False)
    return near.any(1)


def _near_tied(ref, out, ref_floor, out_floor, competitor, ref_matched, out_matched, bound):
    """(reference, artifact) masks of near-tied detections (module doc, step 2)."""
    ref_scores, out_scores = ref["scores"], out["scores"]
    close = np.abs(ref_scores[:, None] - out_scores[None]) <= bound.score
    ref_tied = ((ref_scores - ref_floor <= bound.score) | _neighbour_tied(ref, bound.score)
                | (competitor & close & ~out_matched[None]).any(1))
    out_tied = ((out_scores - out_floor <= bound.score) | _neighbour_tied(out, bound.score)
                | (competitor & close & ~ref_matched[:, None]).any(0))
    while True:  # what a swapped box had suppressed
        loose_out = (out_tied & ~out_matched)[None]
        loose_ref = (ref_tied & ~ref_matched)[:, None]
        new_ref = ref_tied | (~ref_matched & (competitor & loose_out).any(1))
        new_out = out_tied | (~out_matched & (competitor & loose_ref).any(0))
        if np.array_equal(new_ref, ref_tied) and np.array_equal(new_out, out_tied):
            return ref_tied, out_tied
        ref_tied, out_tied = new_ref, new_out


def _describe(side: str, i: int, cls, score, box) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (f"image {i}: {side} detection class {int(cls)} score {float(score):.3f} box "
            f"({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) has no counterpart")


def match_fp16(reference: dict, served: dict, originals: np.ndarray, *, score_threshold: float,
               nms_iou: float, max_detections: int,
               bound: Fp16Bound = FP16_BOUND) -> Fp16Match:
    """Match and measure (module doc); `problem` says why the artifact fails, if it does."""
    from scipy.optimize import linear_sum_assignment

    from keras_res2net.detection.deploy import paste_detections

    ref_count = np.asarray(reference["num_detections"]).astype(int)
    out_count = np.asarray(served["num_detections"]).astype(int)
    result = Fp16Match(counts=(out_count.tolist(), ref_count.tolist()))
    mask_ious: list[float] = []
    for i, (n_ref, n_out) in enumerate(zip(ref_count, out_count, strict=True)):
        ref = {k: np.asarray(reference[k])[i, :n_ref] for k in ("boxes", "scores", "classes")}
        out = {k: np.asarray(served[k])[i, :n_out] for k in ("boxes", "scores", "classes")}
        if not (np.all(np.isfinite(out["boxes"])) and np.all(np.isfinite(out["scores"]))):
            result.problem = f"image {i}: non-finite boxes or scores"
            return result
        result.total += max(n_ref, n_out)
        iou = box_iou(ref["boxes"].astype(np.float64), out["boxes"].astype(np.float64))
        same = ref["classes"][:, None] == out["classes"][None]
        rows, cols = linear_sum_assignment(np.where(same, 1.0 - iou, 2.0))
        good = same[rows, cols] & (iou[rows, cols] >= bound.match_iou)
        rows, cols = rows[good], cols[good]
        ref_matched = np.zeros(n_ref, bool)
        out_matched = np.zeros(n_out, bool)
        ref_matched[rows] = out_matched[cols] = True
        competitor = same & (iou > nms_iou)
        competitor[rows, cols] = False
        ref_tied, out_tied = _near_tied(
            ref, out, _floor(ref["scores"], score_threshold, max_detections),
            _floor(out["scores"], score_threshold, max_detections), competitor, ref_matched,
            out_matched, bound)
        result.near_tied += int(ref_tied.sum() + out_tied.sum())
        for side, values, lost in (("reference", ref, ~ref_matched & ~ref_tied),
                                   ("artifact", out, ~out_matched & ~out_tied)):
            result.lost += [_describe(side, i, values["classes"][j], values["scores"][j],
                                      values["boxes"][j]) for j in np.flatnonzero(lost)]
        result.matched += len(rows)
        if not len(rows):
            continue
        diff = np.abs(ref["boxes"][rows].astype(np.float64) - out["boxes"][cols]).max(-1)
        size = np.maximum(ref["boxes"][rows, 2:] - ref["boxes"][rows, :2], 1.0).max(-1)
        result.box_diff = max(result.box_diff, float(diff.max()))
        result.box_relative = max(result.box_relative, float((diff / size).max()))
        result.score_diff = max(result.score_diff, float(np.abs(
            ref["scores"][rows].astype(np.float64) - out["scores"][cols]).max()))
        if "masks" in reference:
            height, width = (int(v) for v in originals[i])
            ref_masks = paste_detections(reference, i, height, width).astype(bool)[rows]
            out_masks = paste_detections(served, i, height, width).astype(bool)[cols]
            inter = np.logical_and(ref_masks, out_masks).sum((1, 2))
            union = np.logical_or(ref_masks, out_masks).sum((1, 2))
            mask_ious += np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist()
    if mask_ious:
        result.mask_iou_mean, result.mask_iou_min = float(np.mean(mask_ious)), min(mask_ious)
    result.problem = judge_fp16(result, bound)
    return result


def judge_fp16(found: Fp16Match, bound: Fp16Bound = FP16_BOUND) -> str:
    """Why `found` fails `bound` ("" when it passes)."""
    if found.problem:
        return found.problem
    if not found.total:
        return ("no detections on any check image: nothing was compared, so the artifact is "
                "not shown to detect what the model detects")
    if found.lost:
        more = f" (and {len(found.lost) - 1} more)" if len(found.lost) > 1 else ""
        return (f"{found.lost[0]}{more}, and its score margin exceeds the fp16 error "
                f"{bound.score:g}")
    checks = [
        (found.fraction >= bound.matched_fraction,
         f"only {found.matched} of {found.total} detections matched"),
        (found.box_relative <= bound.box_relative,
         f"a matched box moved by {found.box_relative:.3f} of its size"),
        (found.score_diff <= bound.score, f"a matched score moved by {found.score_diff:.3f}"),
        (found.mask_iou_mean >= bound.mask_iou,
         f"matched masks' mean IoU {found.mask_iou_mean:.3f}")]
    return next((why for ok, why in checks if not ok), "")

"""The Keras detection heads, filled through the converter's key mapping, against mmdetection.

tests/fixtures/mmdet/heads.npz holds what mmdetection 3.3's own FPN, RPNHead,
Shared2FCBBoxHead (class-specific and agnostic), FCNMaskHead, HTCMaskHead and
FusedSemanticHead computed in float64 on seeded weights (tools/make_mmdet_head_fixtures.py).
Here the same seeded tensors go through `weight_map`'s slots (key names and layout changes)
into the Keras layers: equal outputs prove names, transposes, the CHW flatten, the background
row, the deconv and the lateral order against the real modules, without a backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_data import seeded_parameters

from keras_res2net.detection import weight_map

FIXTURE = Path(__file__).parent.parent / "fixtures" / "mmdet" / "heads.npz"
LEVELS = ("P2", "P3", "P4", "P5")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays, seeded_parameters(meta["key_shapes"], meta["seed"])


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1)).astype(np.float32)


def fill(slots, tensors, used: set | None = None):
    for slot in slots:
        slot.variable.assign(slot.transform.to_keras(tensors[slot.key]))
        if used is not None:
            used.add(slot.key)


def close(ours, expected, rtol=1e-4):
    """float32 Keras vs float64 mmdetection, relative to the output's scale."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=rtol * scale)


def test_every_fixture_tensor_is_used(reference):
    """The heads below consume the whole state dict of mmdetection's modules."""
    meta, arrays, tensors = reference
    used = set()
    _pyramid(meta, arrays, tensors, used)
    _box_heads(meta, arrays, tensors, used)
    _mask_heads(meta, arrays, tensors, used)
    _semantic(meta, arrays, tensors, used)
    assert used == set(tensors)


def _pyramid(meta, arrays, tensors, used=None):
    from keras_res2net.detection.modeling.fpn import FPN
    from keras_res2net.detection.modeling.heads import RPNHead

    fpn = FPN(meta["channels"])
    backbone = {level: nhwc(arrays[f"in:neck.{i}"]) for i, level in enumerate(LEVELS)}
    fpn(backbone)
    fill(weight_map.fpn_slots(fpn), tensors, used)
    pyramid = fpn(backbone)
    rpn = RPNHead(meta["channels"], 3)
    rpn(pyramid)
    fill(weight_map.rpn_slots(rpn), tensors, used)
    return pyramid, rpn(pyramid)


def test_fpn_and_rpn_head(reference):
    meta, arrays, tensors = reference
    pyramid, (scores, deltas) = _pyramid(meta, arrays, tensors)
    for i, level in enumerate((*LEVELS, "P6")):
        close(pyramid[level], nhwc(arrays[f"out:neck.{i}"]))
        # mmdetection flattens (B, A, H, W) as (H, W, A): the anchor order of anchors.py
        close(scores[level], nhwc(arrays[f"out:rpn_cls.{i}"]).reshape(1, -1))
        close(deltas[level], nhwc(arrays[f"out:rpn_reg.{i}"]).reshape(1, -1, 4))


def _box_heads(meta, arrays, tensors, used=None):
    from keras_res2net.detection.modeling.heads import BoxHead

    results = {}
    for prefix, agnostic in (("roi_head.bbox_head", False), ("roi_head.bbox_head.0", True)):
        head = BoxHead(meta["classes"], meta["fc_dim"], class_agnostic=agnostic)
        head.build((None, None, 7, 7, meta["channels"]))
        fill(weight_map.box_head_slots(head, prefix, 7), tensors, used)
        results[prefix] = head(nhwc(arrays[f"in:{prefix}"])[None])
    return results


def test_box_heads(reference):
    meta, arrays, tensors = reference
    for prefix, (logits, deltas) in _box_heads(meta, arrays, tensors).items():
        cls = arrays[f"out:{prefix}.cls"]
        close(np.asarray(logits)[0, :, 0], cls[:, -1])  # background: first here, last there
        close(np.asarray(logits)[0, :, 1:], cls[:, :-1])
        reg = arrays[f"out:{prefix}.reg"]
        close(np.asarray(deltas)[0], reg.reshape(reg.shape[0], -1, 4))


def _mask_heads(meta, arrays, tensors, used=None):
    from keras_res2net.detection.modeling.heads import MaskHead

    plain = MaskHead(meta["classes"], meta["channels"], 4)
    htc = MaskHead(meta["classes"], meta["channels"], 4, with_conv_res=True)
    rois = nhwc(arrays["in:roi_head.mask_head"])[None]
    for head, prefix in ((plain, "roi_head.mask_head"), (htc, "roi_head.mask_head.1")):
        head.build((None, None, *rois.shape[2:]))
        fill(weight_map.mask_head_slots(head, prefix), tensors, used)
    residual = nhwc(arrays["in:roi_head.mask_head.1.res"])[None]
    return plain(rois), htc(rois, residual, return_features=True)


def test_mask_heads_with_deconv_and_conv_res(reference):
    meta, arrays, tensors = reference
    plain, (logits, features) = _mask_heads(meta, arrays, tensors)
    close(np.asarray(plain)[0], nhwc(arrays["out:roi_head.mask_head"]))
    close(np.asarray(logits)[0], nhwc(arrays["out:roi_head.mask_head.1"]))
    close(np.asarray(features)[0], nhwc(arrays["out:roi_head.mask_head.1.features"]))


def _semantic(meta, arrays, tensors, used=None):
    from keras_res2net.detection.modeling.semantic import FusedSemanticHead

    pyramid = {level: nhwc(arrays[f"out:neck.{i}"]) for i, level in enumerate((*LEVELS, "P6"))}
    head = FusedSemanticHead(meta["semantic_classes"], meta["channels"], 4)
    head(pyramid)
    fill(weight_map.semantic_slots(head, "roi_head.semantic_head"), tensors, used)
    return head(pyramid)


def test_fused_semantic_head(reference):
    meta, arrays, tensors = reference
    logits, embedding = _semantic(meta, arrays, tensors)
    close(logits, nhwc(arrays["out:roi_head.semantic_head.logits"]))
    close(embedding, nhwc(arrays["out:roi_head.semantic_head.embedding"]))

"""The committed mmdetection fixtures are reproducible and worth comparing against.

No Keras model here: these tests check the data in ``tests/fixtures/mmdet/`` (written by
tools/make_mmdet_fixtures.py) on its own. The weights are not stored but regenerated from
NumPy's PCG64 raw stream, so a change in that stream must fail loudly here rather than as a
puzzling parity mismatch; and fixtures whose detectors detect nothing would make the parity
tests vacuous.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from mmdet_weights import (
    CALIB_PREFIX,
    FIXTURES,
    RUNNING_STATS,
    MmdetFixture,
    load_fixture,
    rebuild_state_dict,
    seeded_state_dict,
    uniform01,
    verify_seeded_hash,
)

CONFIGS = ["faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn", "htc"]
MASK_CONFIGS = {"mask_rcnn", "cascade_mask_rcnn", "htc"}
N_STAGES = {"faster_rcnn": 1, "mask_rcnn": 1, "cascade_rcnn": 3, "cascade_mask_rcnn": 3,
            "htc": 3}
PROBED = ([f"backbone.{i}" for i in range(4)] + [f"neck.{i}" for i in range(5)]
          + [f"rpn.{part}.{i}" for part in ("cls_score", "bbox_pred") for i in range(5)])


@functools.cache
def fixture(name: str) -> MmdetFixture:
    return load_fixture(name)


def test_pcg64_raw_stream_is_the_one_the_fixtures_were_made_with():
    # A canary that needs no fixture: the first draws for one key, as NumPy 2.4 gave them.
    u = uniform01(0, "backbone.stem.0.weight", 3)
    assert u.tolist() == [0.5141224175747073, 0.6066566725622331, 0.6022665503929938]


def test_seeded_tensors_depend_only_on_key_shape_and_seed():
    shapes = {"neck.fpn_convs.0.conv.weight": (4, 3, 3, 3), "neck.fpn_convs.0.conv.bias": (4,),
              "backbone.layer1.0.bn3.weight": (5,), "backbone.layer1.0.bn3.bias": (5,),
              "backbone.layer1.0.bn3.running_var": (5,)}
    full = seeded_state_dict(shapes)
    alone = seeded_state_dict({"neck.fpn_convs.0.conv.weight": (4, 3, 3, 3)})
    np.testing.assert_array_equal(full["neck.fpn_convs.0.conv.weight"],
                                  alone["neck.fpn_convs.0.conv.weight"])
    assert not np.array_equal(seeded_state_dict(shapes, seed=1)["neck.fpn_convs.0.conv.bias"],
                              full["neck.fpn_convs.0.conv.bias"])
    gamma = full["backbone.layer1.0.bn3.weight"]
    assert gamma.dtype == np.float32 and ((gamma >= 0.1) & (gamma < 0.3)).all()
    np.testing.assert_array_equal(full["backbone.layer1.0.bn3.running_var"], np.ones(5))


@pytest.mark.parametrize("name", CONFIGS)
def test_regenerated_weights_hash_as_recorded(name):
    verify_seeded_hash(fixture(name))


@pytest.mark.parametrize("name", CONFIGS)
def test_rebuilt_state_dict_matches_manifests(name):
    fx = fixture(name)
    state = rebuild_state_dict(fx)
    assert {key: value.shape for key, value in state.items()} == fx.manifest()
    # The reduced model is the published one with stages cut to their first block: every key
    # exists in the full-size manifest with the same shape.
    published = json.loads((FIXTURES / fx.meta["full_size_manifest"]).read_text())
    assert published["config"] == fx.meta["published_model"]
    full = published["state_dict"]
    for key, shape in fx.manifest().items():
        assert tuple(full[key]) == shape, key
    assert {key for key in full if not key.startswith("backbone.")} == {
        key for key in fx.manifest() if not key.startswith("backbone.")}
    calibrated = {key[len(CALIB_PREFIX):] for key in fx.arrays if key.startswith(CALIB_PREFIX)}
    assert calibrated == {key for key in state if key.endswith(RUNNING_STATS)}
    for key in calibrated:
        if key.endswith("running_var"):
            assert (state[key] > 0).all(), key
        if key.endswith("num_batches_tracked"):
            assert int(state[key]) == fx.meta["calibration"]["batches"], key


@pytest.mark.parametrize("name", CONFIGS)
def test_schema(name):
    fx = fixture(name)
    a, meta = fx.arrays, fx.meta
    stages = list(range(N_STAGES[name]))
    assert meta["stages"] == {"bbox": stages, "mask": stages if name in MASK_CONFIGS else []}
    probed = PROBED + [f"bbox{s}.head_input" for s in stages]
    if name in MASK_CONFIGS:
        probed += [f"mask{s}.head_input" for s in stages]
    if name == "htc":
        probed += ["semantic.pred", "semantic.feat"]
    for key in probed:
        shape, idx, val, stats = (a[f"{key}.{part}"] for part in ("shape", "idx", "val", "stats"))
        assert idx.shape == val.shape and idx.max() < np.prod(shape), key
        assert val.dtype == np.float32 and np.isfinite(val).all() and np.isfinite(stats).all()
        assert 0 < stats[1] and np.abs(val).max() <= stats[2], key
    batch = meta["images"][0]["batch_input_shape"]
    assert a["neck.0.shape"].tolist() == [2, 256, batch[0] // 4, batch[1] // 4]
    for i, info in enumerate(meta["images"]):
        assert a[f"img{i}.original"].shape == (*info["ori_shape"], 3)
        assert a[f"img{i}.resized"].shape == (*info["img_shape"], 3)
        assert info["batch_input_shape"] == batch
        assert all(d <= b for d, b in zip(info["img_shape"], batch, strict=True))
        assert a[f"rpn.proposals{i}.bboxes"].shape == (len(a[f"rpn.proposals{i}.scores"]), 4)
    # Mixed orientation: one image is padded at the bottom, the other on the right.
    shapes = [info["img_shape"] for info in meta["images"]]
    assert {tuple(np.greater(batch, s)) for s in shapes} == {(True, False), (False, True)}
    for s in stages:
        rows = a[f"bbox{s}.rows"]
        rois = a[f"bbox{s}.rois"]
        assert rois.shape[1] == 5 and len(rows) == 2 * meta["kept_rows"]["bbox"]
        assert a[f"bbox{s}.cls_score"].shape == (len(rows), 81)
        regress = 320 if name in ("faster_rcnn", "mask_rcnn") else 4
        assert a[f"bbox{s}.bbox_pred"].shape == (len(rows), regress)
        if name in MASK_CONFIGS:
            assert a[f"mask{s}.mask_pred"].shape == (len(a[f"mask{s}.rows"]), 28, 28)
    if name in MASK_CONFIGS:
        counts = [len(a[f"det{i}.scores"]) for i in range(2)]
        assert np.bincount(a["mask.rois"][:, 0].astype(int)).tolist() == counts


@pytest.mark.parametrize("name", CONFIGS)
def test_detections_are_non_trivial(name):
    fx = fixture(name)
    a, meta = fx.arrays, fx.meta
    score_thr = meta["test_cfg"]["rcnn"]["score_thr"]
    for i, info in enumerate(meta["images"]):
        boxes, scores, labels = (a[f"det{i}.{part}"] for part in ("bboxes", "scores", "labels"))
        assert len(scores) >= 20 and len(scores) == len(boxes) == len(labels) == info["num_dets"]
        assert (scores > score_thr).all() and (scores <= 1).all()
        assert scores.max() - scores.min() > 0.1 and scores.std() > 0.02
        assert (np.diff(scores) <= 0).all(), "mmdetection returns detections best first"
        assert len(np.unique(labels)) >= 5 and labels.min() >= 0 and labels.max() < 80
        h, w = info["ori_shape"]
        assert (boxes >= -1e-3).all() and (boxes[:, [0, 2]] <= w + 1e-3).all()
        assert (boxes[:, [1, 3]] <= h + 1e-3).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        if name in MASK_CONFIGS:
            masks = np.unpackbits(a[f"det{i}.masks"], axis=-1, count=w).astype(bool)
            assert masks.shape == (len(scores), h, w)
            assert (masks.reshape(len(scores), -1).sum(1) > 0).mean() > 0.5
        else:
            assert f"det{i}.masks" not in a

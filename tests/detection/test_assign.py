"""Max-IoU assignment with low-quality matches, and balanced sampling."""

import numpy as np

from keras_res2net.detection.ops.assign import assign
from keras_res2net.detection.ops.sampling import balanced_mask, sample_indices

ANCHORS = np.array([[[0, 0, 10, 10],        # IoU 1 with gt 0: positive
                     [0, 0, 10, 5],         # IoU 0.5 with gt 0: between thresholds, ignored
                     [20, 20, 30, 30],      # no overlap (padding row has this box): negative
                     [100, 100, 110, 110],  # IoU 90/110 with gt 1: positive
                     [50, 50, 60, 70]]],    # IoU 0.5 with gt 2: only a low-quality match
                   np.float32)
GT = np.array([[[0, 0, 10, 10], [101, 100, 111, 110], [50, 50, 60, 60], [20, 20, 30, 30]]],
              np.float32)
VALID = np.array([[True, True, True, False]])


def test_assignment_by_hand():
    labels, matched, max_iou = assign(ANCHORS, GT, VALID, pos_iou=0.7, neg_iou=0.3)
    np.testing.assert_array_equal(labels, [[1, -1, 0, 1, -1]])
    assert matched[0, 0] == 0 and matched[0, 3] == 1
    np.testing.assert_allclose(max_iou, [[1.0, 0.5, 0.0, 90 / 110, 0.5]], rtol=1e-6)


def test_low_quality_matches_give_every_object_an_anchor():
    labels, matched, _ = assign(ANCHORS, GT, VALID, pos_iou=0.7, neg_iou=0.3,
                                min_pos_iou=0.3, low_quality_matches=True)
    # Anchor 1 (0.5 with gt 0) is not gt 0's best, so it stays ignored; anchor 4 is gt 2's best.
    np.testing.assert_array_equal(labels, [[1, -1, 0, 1, 1]])
    assert matched[0, 4] == 2


def test_no_ground_truth_means_all_negative():
    labels, _, _ = assign(ANCHORS, GT, np.zeros_like(VALID), pos_iou=0.7, neg_iou=0.3,
                          low_quality_matches=True)
    np.testing.assert_array_equal(labels, [[0, 0, 0, 0, 0]])


def test_balanced_sampling_counts():
    labels = np.array([[1] * 10 + [0] * 100 + [-1] * 5, [1] * 2 + [0] * 100 + [-1] * 13])
    pos, neg = balanced_mask(labels, 20, 0.25, seed=1)
    pos, neg = np.asarray(pos), np.asarray(neg)
    np.testing.assert_array_equal(pos.sum(1), [5, 2])
    np.testing.assert_array_equal(neg.sum(1), [15, 18])
    assert not (pos & (labels != 1)).any() and not (neg & (labels != 0)).any()


def test_sample_indices_put_positives_first():
    labels = np.array([[0, -1, 1, 0, 1, 0, 0, 1]])
    index, is_pos, is_sampled = sample_indices(labels, 4, 0.5, seed=3)
    index, is_pos = np.asarray(index), np.asarray(is_pos)
    np.testing.assert_array_equal(is_pos, [[True, True, False, False]])
    assert set(index[0, :2]) <= {2, 4, 7} and set(index[0, 2:]) <= {0, 3, 5, 6}
    assert np.asarray(is_sampled).all()


def test_invalid_boxes_are_ignored_and_never_a_best_match():
    # Anchor 4 is gt 2's only overlap: when it is invalid (on the padding, or across the
    # border) gt 2 gets no low-quality match and anchor 4 is ignored, not negative.
    box_valid = np.array([[True, True, False, True, False]])
    labels, _, _ = assign(ANCHORS, GT, VALID, pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3,
                          low_quality_matches=True, box_valid=box_valid)
    np.testing.assert_array_equal(labels, [[1, -1, -1, 1, -1]])
    # A valid, worse anchor then becomes gt 2's best match.
    anchors = np.concatenate([ANCHORS, np.float32([[[50, 52, 60, 75]]])], axis=1)
    labels, matched, _ = assign(anchors, GT, VALID, pos_iou=0.7, neg_iou=0.3,
                                min_pos_iou=0.3, low_quality_matches=True,
                                box_valid=np.concatenate([box_valid, [[True]]], axis=1))
    np.testing.assert_array_equal(labels, [[1, -1, -1, 1, -1, 1]])
    assert matched[0, 5] == 2


def test_rois_are_assigned_alone_then_the_ground_truth_added():
    # mmdetection's sampler: the assigner sees the proposals alone, then each ground truth
    # joins as a positive of its own object. Proposal 0 overlaps gt A 0.714 and gt B 0.7;
    # it is B's best proposal, so Mask R-CNN's low-quality matching (min_pos_iou 0.5) gives
    # it to B. Were the ground truths candidates of the assigner, B's best would be B itself.
    from keras_res2net.detection.targets import sample_rois

    gt = np.float32([[[0, 0, 10, 10], [0, 0, 10, 20]]])
    rois = np.float32([[[0, 0, 10, 14], *[[30, 30, 40, 40]] * 5]])
    kwargs = dict(iou=0.5, num_samples=8, pos_fraction=0.5, stds=(0.1, 0.1, 0.2, 0.2),
                  seed=0)
    for low_quality, expected in ((False, 1), (True, 2)):
        sample = sample_rois(rois, np.ones((1, 6), bool), gt, np.array([[1, 2]]),
                             np.array([[True, True]]), low_quality_matches=low_quality,
                             **kwargs)
        is_pos, is_gt = np.asarray(sample.is_pos)[0], np.asarray(sample.is_gt)[0]
        classes = np.asarray(sample.classes)[0]
        assert is_pos.sum() == 3 and np.asarray(sample.is_sampled).sum() == 8
        assert sorted(classes[is_gt]) == [1, 2]  # each ground truth: its own class
        assert classes[is_pos & ~is_gt].tolist() == [expected]
        np.testing.assert_allclose(np.asarray(sample.box_targets)[0][is_gt], 0.0, atol=1e-6)

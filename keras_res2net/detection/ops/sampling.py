"""Balanced random sampling of positives and negatives (mmdetection's RandomSampler).

At most `num_samples * pos_fraction` positives are drawn at random, negatives fill the rest.
Shapes stay static: the result is a selection mask, and `sample_indices` returns a fixed
number of indices ordered positives first, negatives next, then unselected padding.
"""

from __future__ import annotations

import keras
from keras import ops


def _ranks(scores):
    """Rank of every entry along the last axis when sorted in decreasing order (0 = largest)."""
    return ops.argsort(ops.argsort(-scores, axis=-1), axis=-1)


def balanced_mask(labels, num_samples: int, pos_fraction: float, seed=None):
    """Boolean masks `(positives, negatives)` of the sampled entries of `labels` (B, N)."""
    noise = keras.random.uniform(ops.shape(labels), seed=seed)
    pos = labels == 1
    neg = labels == 0
    max_pos = int(num_samples * pos_fraction)
    num_pos = ops.minimum(ops.sum(ops.cast(pos, "int32"), axis=-1, keepdims=True), max_pos)
    num_neg = ops.minimum(ops.sum(ops.cast(neg, "int32"), axis=-1, keepdims=True),
                          num_samples - num_pos)
    pos_rank = _ranks(ops.where(pos, noise, -1.0))
    neg_rank = _ranks(ops.where(neg, noise, -1.0))
    return pos & (pos_rank < num_pos), neg & (neg_rank < num_neg)


def sample_indices(labels, num_samples: int, pos_fraction: float, seed=None):
    """`(indices, is_positive, is_sampled)`, each (B, num_samples), positives first."""
    pos, neg = balanced_mask(labels, num_samples, pos_fraction, seed)
    tie_break = keras.random.uniform(ops.shape(labels), seed=seed) * 0.5
    key = ops.cast(pos, "float32") * 2.0 + ops.cast(neg, "float32") + tie_break
    _, indices = ops.top_k(key, num_samples, sorted=True)
    is_pos = ops.take_along_axis(pos, indices, axis=-1)
    is_sampled = is_pos | ops.take_along_axis(neg, indices, axis=-1)
    return indices, is_pos, is_sampled

"""The detector for test time: its backbone's BatchNorm folded into the convolutions.

The detectors run their Res2Net backbone with BatchNorm in inference mode (`norm_eval`), so
at test time every backbone BN is a fixed per-channel affine map that `keras_res2net.fold`
moves into the convolution before it. `fold_detector(model)` returns a new detector of the
same architecture (any of the five) whose backbone is `fold_batchnorm(model.backbone)` and
whose FPN, RPN and RoI heads carry `model`'s weights: the same detections up to float32
rounding (tests/detection/test_fold_detector.py), a faster backbone (docs/speed.md).

The folded detector is for inference only: its backbone has no BN parameters left to train
(`TwoStageDetector.extract` refuses `training=True`), and its weights no longer fit a
`detector.weights.h5` of the architecture; keep the unfolded model to save or train.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = ["fold_detector"]


def _training_problem(model: keras.Model) -> str | None:
    """Why folding `model` would silently drop training state, if it would: a detector
    compiled for training whose backbone BN layers are trainable."""
    if getattr(model, "optimizer", None) is None:
        return None
    trainable = [layer.name for layer in model.backbone.layers
                 if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not trainable:
        return None
    return (f"fold_detector: {model.name!r} is compiled for training and {len(trainable)} "
            f"BatchNorm layers of its backbone are trainable (e.g. {trainable[0]!r}); folding "
            "would freeze them. Fold the trained detector for inference (load it without "
            "compiling), or pass allow_training=True.")


def fold_detector(model: keras.Model, *, allow_training: bool = False,
                  log: Callable[[str], None] | None = None) -> keras.Model:
    """A new detector equal to `model` at test time, its backbone's BatchNorm folded.

    `log` receives `fold_batchnorm`'s one-line count. A backbone without BatchNorm (e.g. one
    already folded) leaves `model` unchanged, returned as it is, with a `UserWarning`. A
    detector compiled for training with trainable backbone BN raises ValueError unless
    `allow_training=True`. `model` itself is not modified."""
    from keras_res2net.detection.modeling.factory import build_detector
    from keras_res2net.detection.weight_map import build_variables
    from keras_res2net.fold import fold_batchnorm

    problem = None if allow_training else _training_problem(model)
    if problem:
        raise ValueError(problem)
    backbone = fold_batchnorm(model.backbone, allow_training=True, log=log)
    if backbone is model.backbone:  # nothing to fold; fold_batchnorm said so
        return model
    folded = build_detector(model.config, backbone)
    folded.backbone_folded = True
    build_variables(folded)  # the heads' variables, as a call would create them
    _copy_head_weights(model, folded)
    return folded


def _copy_head_weights(source: keras.Model, target: keras.Model) -> None:
    """Every weight outside the backbone (FPN, RPN, RoI heads), in tracking order."""
    def heads(model):
        skip = {id(w) for w in model.backbone.weights}
        return [w for w in model.weights if id(w) not in skip]

    given, wanted = heads(source), heads(target)
    shapes = [tuple(w.shape) for w in given], [tuple(w.shape) for w in wanted]
    if shapes[0] != shapes[1]:
        raise ValueError(f"fold_detector: the rebuilt detector's head weights do not match "
                         f"{source.name!r}'s ({len(given)} vs {len(wanted)} arrays).")
    for src, dst in zip(given, wanted, strict=True):
        dst.assign(src)

"""--init_weights starts the backbone from a checkpoint with a new head; --eval_only."""

from __future__ import annotations

import numpy as np
import pytest

from keras_res2net import create_model
from keras_res2net.datasets import load_digits
from keras_res2net.training import Trainer, run

KNOBS = dict(layers=(1, 1, 1, 1), base_width=4, input_shape=(32, 32, 3))


def test_init_weights_loads_backbone_and_adds_head(tmp_path, tiny_config):
    backbone = create_model("res2net50_26w_4s", include_top=False, pooling="avg", **KNOBS)
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    trainer = Trainer(tiny_config(tmp_path / "run", init_weights=path))
    for name in ("conv1", "layer4_0_conv3"):
        for got, want in zip(trainer.model.get_layer(name).get_weights(),
                             backbone.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    assert trainer.model.get_layer("head").units == 10


def test_eval_only(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="--eval_only: no checkpoint"):
        run(tiny_config(tmp_path / "empty", eval_only=True))
    # A classifier with a zero kernel outputs its bias whatever the image: the evaluation of
    # these weights is known exactly from the labels (a random init scores something else).
    full = create_model("res2net50_26w_4s", classes=10, classifier_activation=None, **KNOBS)
    bias = np.linspace(2.0, -2.5, 10).astype(np.float32)  # class 0 first, then 1, 2, ...
    fc = full.get_layer("fc")
    fc.kernel.assign(np.zeros(fc.kernel.shape, np.float32))
    fc.bias.assign(bias)
    path = str(tmp_path / "full.weights.h5")
    full.save_weights(path)
    result = run(tiny_config(tmp_path / "eval", eval_only=True, init_weights=path))
    labels = load_digits(image_size=32).val_labels
    log_probs = bias - np.log(np.exp(bias).sum())
    assert result.images == len(labels) == 359
    assert result.top1 == pytest.approx(np.mean(labels == 0), abs=1e-6)
    assert result.top5 == pytest.approx(np.mean(labels < 5), abs=1e-6)
    assert result.loss == pytest.approx(-log_probs[labels].mean(), rel=1e-5)

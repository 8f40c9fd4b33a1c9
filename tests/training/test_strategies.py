"""The same custom loop runs under one_device and mirrored (one CPU replica here)."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from keras_res2net.training import Trainer


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_loop_under_strategy(tmp_path, tiny_config, strategy):
    config = tiny_config(tmp_path, strategy=strategy, epochs=1, steps_per_epoch=2)
    trainer = Trainer(config)
    expected = {"one_device": tf.distribute.OneDeviceStrategy,
                "mirrored": tf.distribute.MirroredStrategy}[strategy]
    assert isinstance(trainer.strategy, expected)
    before = [w.copy() for w in trainer.model.get_weights()]
    result = trainer.train()
    assert int(trainer.step.numpy()) == 2 and result.images == 359
    changed = [not (a == b).all() for a, b in zip(before, trainer.model.get_weights(),
                                                  strict=True)]
    assert any(changed)
    assert os.path.exists(os.path.join(tmp_path, "model.keras"))

"""Learning on real data: a small Res2Net reaches >= 90% on held-out digits, and the
model it writes is the documented contract (normalised images -> probabilities)."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_res2net import preprocess_input
from keras_res2net.datasets import load_digits
from keras_res2net.training import run

# Set from the spread over seeds under CI's thread share (tools/learning_spread.py, recorded
# in benchmarks/results/learning_spread.json).
TOP1_BOUND = 0.90


@pytest.mark.slow
def test_digits_learns_and_exports(tmp_path, tiny_config, learning_seed, report_figure):
    model_dir = tmp_path / "digits"
    # The `--data digits` defaults, narrower and shorter: the README run trains longer.
    config = tiny_config(model_dir, base_width=4, batch_size=64, epochs=6, seed=learning_seed)
    result = run(config)
    assert report_figure("top1", result.top1, TOP1_BOUND) >= TOP1_BOUND, result
    assert result.images == 359  # the whole held-out split, padding excluded

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    splits = load_digits(image_size=32, seed=learning_seed)  # the run's held-out split
    probs = model.predict(preprocess_input(splits.val_images), verbose=0)
    assert probs.shape == (359, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-4)
    accuracy = float(np.mean(probs.argmax(-1) == splits.val_labels))
    assert abs(accuracy - result.top1) < 1e-6

    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"]
    assert os.path.getsize(model_dir / "history.png") > 1000
    assert os.listdir(model_dir / "tensorboard")

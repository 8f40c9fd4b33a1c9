"""`.keras` export: the serving model (named input and output, optional preprocessing) saved
with `model.save`, checked by reloading it with `safe_mode=True` (no arbitrary code)."""

from __future__ import annotations

import keras
import numpy as np

from keras_res2net.export.source import ServingModel


def write_keras(serving: ServingModel, path: str) -> None:
    serving.model.save(path)


def load_keras(path: str, output_name: str, batch_size: int = 64):
    model = keras.saving.load_model(path, compile=False, safe_mode=True)

    def run(images: np.ndarray) -> np.ndarray:
        # predict_on_batch runs the compiled predict function (an eager call would retrace
        # the XLA-wrapped grouped convs on every call and time the tracing, not the model).
        parts = [np.asarray(model.predict_on_batch(images[i:i + batch_size])[output_name])
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts)

    return run

"""Training Res2Nets with tf.distribute: config, strategies, data, recipe and the loop.

`keras_res2net.training.run(TrainConfig(...))` is what `train/imagenet.py` calls; the one
trainer (`training.trainer`) also runs detection (`keras_res2net.detection.trainer`).
"""

from keras_res2net.training.classification import Trainer, run
from keras_res2net.training.config import TrainConfig, resolve_config

__all__ = ["TrainConfig", "Trainer", "resolve_config", "run"]

"""Training Res2Nets with tf.distribute: config, strategies, data, recipe and the loop.

`keras_res2net.training.run(TrainConfig(...))` is what `train/imagenet.py` calls.
"""

from keras_res2net.training.config import TrainConfig, resolve_config
from keras_res2net.training.loop import Trainer, run

__all__ = ["TrainConfig", "Trainer", "resolve_config", "run"]

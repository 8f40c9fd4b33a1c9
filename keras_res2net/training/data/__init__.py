"""Training data: sources (digits, TFDS, TFRecord, folder) and tf.data pipelines."""

from keras_res2net.training.data.pipeline import eval_dataset, eval_steps, train_dataset
from keras_res2net.training.data.sources import Source, open_source

__all__ = ["Source", "eval_dataset", "eval_steps", "open_source", "train_dataset"]

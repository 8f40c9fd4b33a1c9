"""Reading published PyTorch checkpoints and mapping them onto Keras Res2Nets."""

from keras_res2net.checkpoints.layouts import NormalizedCheckpoint, normalize_state_dict
from keras_res2net.checkpoints.mapping import LoadReport, assign_state_dict
from keras_res2net.checkpoints.reader import read_state_dict

__all__ = ["LoadReport", "NormalizedCheckpoint", "assign_state_dict", "normalize_state_dict",
           "read_state_dict"]

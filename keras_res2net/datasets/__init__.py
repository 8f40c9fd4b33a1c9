"""Datasets that ship with the project's dependencies (no download)."""

from keras_res2net.datasets.digits import DigitsSplits, load_digits

__all__ = ["DigitsSplits", "load_digits"]

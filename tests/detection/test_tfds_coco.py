"""TFDS coco/2017 through `tfds.testing.mock_data`, with consistent object fields.

The default mock draws each object field with its own length; `as_dataset_fn` supplies
examples whose `bbox`, `label` and `is_crowd` agree, as real COCO does.
"""

import numpy as np
import tensorflow_datasets as tfds
from mock_coco import coco_examples

from keras_res2net.detection.data import tfds_coco
from keras_res2net.detection.data.pipeline import build_dataset


def test_mock_coco_loads_into_the_pipeline():
    with tfds.testing.mock_data(as_dataset_fn=coco_examples):
        raw = tfds_coco.load("train")
        first = next(iter(raw))
        # Crowd object dropped; (ymin, xmin, ymax, xmax) normalised -> xyxy pixels; label + 1.
        np.testing.assert_allclose(first["boxes"], [[40, 10, 80, 30]])
        np.testing.assert_array_equal(first["classes"], [1])
        assert int(first["image_id"]) == 11
        batch = next(iter(build_dataset(raw, batch_size=2, max_size=(80, 80),
                                        max_instances=4)))
    assert batch["images"].shape == (2, 64, 96, 3)  # 40x80 fits as is; padded to 32
    np.testing.assert_array_equal(batch["classes"], [[1, 0, 0, 0], [4, 5, 0, 0]])

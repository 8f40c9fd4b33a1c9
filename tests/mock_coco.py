"""A consistent TFDS coco/2017 mock (`tfds.testing.mock_data(as_dataset_fn=coco_examples)`).

The default mock draws each object field with its own length; these examples have `bbox`,
`label` and `is_crowd` of one length, as real COCO does. Shared by the detection tests.
"""

import numpy as np
import tensorflow as tf


def coco_examples(*args, **kwargs):
    del args, kwargs
    image = np.zeros((2, 40, 80, 3), np.uint8)
    return tf.data.Dataset.from_tensor_slices({
        "image": image,
        "image/id": np.array([11, 12], np.int64),
        "image/filename": np.array([b"a.jpg", b"b.jpg"]),
        "objects": {
            "bbox": np.array([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]],
                              [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]], np.float32),
            "label": np.array([[0, 79], [3, 4]], np.int64),
            "is_crowd": np.array([[False, True], [False, False]]),
            "area": np.array([[1, 1], [1, 1]], np.int64),
            "id": np.array([[1, 2], [3, 4]], np.int64),
        },
    })

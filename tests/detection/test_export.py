"""SavedModel export: the serving signature returns the model's detections."""

import numpy as np
import tensorflow as tf

from keras_res2net.detection import configs
from keras_res2net.detection.export import export_saved_model
from keras_res2net.detection.task import DetectionTask


def test_saved_model_serves_detections(tmp_path):
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    config.model.heads = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8,
                                            mask_convs=1)
    config.model.rpn.post_nms_topk = 30
    model = DetectionTask(config).build_model()
    export_saved_model(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    image = np.random.default_rng(0).integers(0, 256, (1, 70, 90, 3), dtype=np.uint8)
    served = serve(images=tf.constant(image))
    padded = np.zeros((1, 96, 96, 3), np.float32)
    padded[:, :70, :90] = image
    expected = model(padded)
    assert set(served) == {"boxes", "scores", "classes", "num_detections", "masks"}
    assert served["masks"].shape == (1, 100, 28, 28)
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(served[key], expected[key], atol=1e-4, err_msg=key)

"""Drawing detections: masks tinted in the class colour, boxes outlined."""

import numpy as np

from keras_res2net.detection.predict import PALETTE, draw_detections


def test_draw_detections_tints_masks_and_outlines_boxes():
    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((1, 40, 60), np.uint8)
    mask[0, 20:30, 30:50] = 1
    picture = np.asarray(draw_detections(image, [[10, 10, 50, 35]], [0.9], [2], mask,
                                         names={2: "rectangle"}))
    assert picture.shape == (40, 60, 3)
    np.testing.assert_allclose(picture[25, 40], np.array(PALETTE[1]) * 0.45, atol=1)
    np.testing.assert_array_equal(picture[35, 30], PALETTE[1])  # bottom edge of the box
    assert not picture[38:].any()  # below the box: untouched

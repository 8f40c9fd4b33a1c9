"""Initialisers of the layers trained from scratch, as mmdetection's `init_cfg` gives them.

FPN convs: Xavier (Glorot) uniform. Mask head convs, deconv, logits and HTC's `conv_res`:
PyTorch's `kaiming_normal_(mode="fan_out")`, an untruncated normal of std sqrt(2 / fan_out).
Channels differ between input and output so that fan-in and fan-out scalings disagree.
"""

import keras
import numpy as np

from keras_res2net.detection.modeling.fpn import FPN
from keras_res2net.detection.modeling.heads import BoxHead, MaskHead
from keras_res2net.detection.modeling.semantic import FusedSemanticHead


def test_fpn_convs_are_xavier_uniform():
    keras.utils.set_random_seed(0)
    fpn = FPN(channels=64, levels=("P2", "P3"))
    fpn({"P2": np.zeros((1, 8, 8, 16), np.float32), "P3": np.zeros((1, 4, 4, 16), np.float32)})
    for conv, fan_in in ((fpn.laterals["P2"], 16), (fpn.outputs_convs["P3"], 64 * 9)):
        kernel = np.abs(np.asarray(conv.kernel))
        fan_out = 64 * kernel.shape[0] * kernel.shape[1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))  # fan-in scaling alone: sqrt(3 / fan_in)
        assert 0.95 * limit < kernel.max() <= limit
        assert not np.asarray(conv.bias).any()


def test_mask_head_convs_are_kaiming_normal_fan_out():
    keras.utils.set_random_seed(0)
    head = MaskHead(num_classes=3, channels=64, num_convs=2, with_conv_res=True)
    pooled = np.zeros((1, 2, 14, 14, 16), np.float32)
    head(pooled, np.zeros((1, 2, 14, 14, 64), np.float32))
    layers = [*head.convs, head.deconv, head.logits, head.conv_res]
    for layer in layers:
        kernel = np.asarray(layer.kernel)
        area = kernel.shape[0] * kernel.shape[1]
        # Keras kernels end in (in, out) for convs, (out, in) for the transposed conv:
        # PyTorch's fan_out is out * area for a conv and in * area for a transposed conv,
        # here both the last axis.
        std = np.sqrt(2.0 / (kernel.shape[-1] * area))
        np.testing.assert_allclose(kernel.std(), std, rtol=0.15)
    # Untruncated: among 9216 normal draws some lie beyond 3 std (truncation stops at 2).
    first = np.asarray(head.convs[0].kernel)
    assert np.abs(first).max() > 3.0 * np.sqrt(2.0 / (64 * 9))


def _box_head_kernels(seed: int) -> list[np.ndarray]:
    """fc_cls kernels of three cascade-stage box heads built after `set_random_seed(seed)`."""
    keras.utils.set_random_seed(seed)
    kernels = []
    for stage in range(3):
        head = BoxHead(num_classes=3, fc_dim=32, class_agnostic=True, name=f"stage{stage}")
        head(np.zeros((1, 2, 7, 7, 8), np.float32))
        kernels.append(np.asarray(head.cls.kernel))
    return kernels


def test_equal_shaped_layers_start_apart_and_follow_the_seed():
    """One shared unseeded Keras initializer draws the same values for every call of one
    shape, and is seeded when the module is imported: the three cascade stages' classifiers
    (and HTC's four semantic convs) started equal, and `set_random_seed` did not reach them."""
    first, second, third = _box_head_kernels(0)
    assert not np.array_equal(first, second) and not np.array_equal(second, third)
    np.testing.assert_allclose(first.std(), 0.01, rtol=0.2)  # mmdetection's normal_init(0.01)
    assert all(np.array_equal(a, b) for a, b in zip(_box_head_kernels(0), (first, second, third),
                                                    strict=True))
    assert not np.array_equal(_box_head_kernels(1)[0], first)

    keras.utils.set_random_seed(0)
    semantic = FusedSemanticHead(num_classes=4, channels=16, num_convs=2, levels=("P2", "P3"),
                            fusion_level="P3")
    semantic({"P2": np.zeros((1, 8, 8, 16), np.float32),
              "P3": np.zeros((1, 4, 4, 16), np.float32)})
    assert not np.array_equal(np.asarray(semantic.convs[0].kernel),
                              np.asarray(semantic.convs[1].kernel))

"""The DSS network on Res2Net pyramids: its wiring and full-resolution logits (its `.keras`
round trip with safe_mode=True is the end-to-end test's: prediction loads model.keras)."""

from __future__ import annotations

import keras
import numpy as np

from keras_res2net.saliency.model import FUSE_INIT, OUTPUTS, inference_model, saliency_model

TINY = dict(layers_per_stage=(1, 1, 1, 1), base_width=4, side_channels=(4, 4, 4, 8, 8))
# DSS's short connections (resnet/train_resnet.prototxt of houqb/DSS): each side's own score,
# then the deeper maps in its concatenation order.
DSS_SHORT_CONNECTIONS = {"side4": ("side6", "side5"), "side3": ("side6", "side5"),
                         "side2": ("side5", "side4", "side6", "side3")}


def _inbound(model: keras.Model, name: str) -> list[str]:
    node = model.get_layer(name)._inbound_nodes[0]
    return [tensor._keras_history[0].name for tensor in node.input_tensors]


def test_dss_wiring_and_full_resolution_logits():
    model = saliency_model(image_size=64, **TINY)
    assert sorted(model.output) == sorted(OUTPUTS)
    assert all(tuple(model.output[name].shape) == (None, 64, 64, 1) for name in OUTPUTS)
    # Side outputs tap the stem (stride 2) and the four stages, as DSS's ResNet version.
    assert _inbound(model, "side2_conv1") == ["relu"]
    assert _inbound(model, "side3_conv1") == ["layer1_0_out"]
    assert _inbound(model, "side6_conv1") == ["layer4_0_out"]
    # Short connections: each connected side mixes its own score with the deeper maps.
    for side, deeper in DSS_SHORT_CONNECTIONS.items():
        assert _inbound(model, f"{side}_concat") == [
            f"{side}_score", *(f"{d}_to_{side}" for d in deeper)]
        assert model.get_layer(f"{side}_short").kernel.shape == (1, 1, 1 + len(deeper), 1)
    names = {layer.name for layer in model.layers}
    assert "side5_short" not in names and "side6_short" not in names
    assert _inbound(model, "fuse_concat") == [f"{s}_up" for s in
                                              ("side6", "side2", "side3", "side4", "side5")]
    np.testing.assert_allclose(model.get_layer("fuse").kernel.numpy(), FUSE_INIT)
    inference = inference_model(model)
    assert inference.output_names == ["fuse"] and inference.count_params() == model.count_params()


def test_any_res2net_pyramid_backbone():
    """The v1b trunk (deep stem) carries the decoder too; the stride-2 tap is its stem ReLU."""
    model = saliency_model("res2net50_v1b_26w_4s", image_size=32, **TINY)
    assert _inbound(model, "side2_conv1") == ["relu"]
    assert tuple(model.output["fuse"].shape) == (None, 32, 32, 1)


def test_backbone_from_a_converted_checkpoint(tmp_path):
    """A `.weights.h5` as `keras_res2net.convert` writes it (classifier included, its
    architecture attribute) initialises the backbone; the decoder keeps its own init."""
    import dataclasses

    from keras_res2net.convert import weights_bytes
    from keras_res2net.models import create_model, resolve_spec

    knobs = dict(layers=(1, 1, 1, 1), base_width=4)
    classifier = create_model("res2net50_26w_4s", input_shape=(32, 32, 3), classes=10,
                              classifier_activation=None, **knobs)
    spec = resolve_spec("res2net50_26w_4s", **knobs)
    arch = {"spec": dataclasses.asdict(spec), "include_top": True, "classes": 10,
            "stage_pool": True, "source": "test", "layout": "official"}
    path = tmp_path / "converted.weights.h5"
    path.write_bytes(weights_bytes(classifier, arch))
    model = saliency_model(image_size=32, weights=str(path), layers_per_stage=(1, 1, 1, 1),
                           base_width=4, side_channels=(4, 4, 4, 8, 8))
    for name in ("conv1", "layer2_0_convs_1", "layer4_0_bn3"):
        for ours, theirs in zip(model.get_layer(name).weights,
                                classifier.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())

"""Strict checkpoint mapping: every full-size variant's reference keys, and every mismatch."""

from __future__ import annotations

import numpy as np
import pytest
from reference_data import ReferenceFixture, load_manifests, seeded_parameters

import keras_res2net
from keras_res2net.checkpoints import assign_state_dict, normalize_state_dict
from keras_res2net.checkpoints.mapping import CheckpointMismatchError
from keras_res2net.summary import trainable_params

MANIFESTS = load_manifests()
REDUCED = "res2net50_26w_4s_reduced"


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_reference_keys_fill_every_weight_exactly_once(variant):
    """timm's state-dict keys and shapes for the full-size model map one to one."""
    manifest = MANIFESTS[variant]
    tensors = {key: np.zeros(shape, np.float32) for key, shape in manifest["keys"].items()}
    model = keras_res2net.create_model(variant)
    report = assign_state_dict(model, normalize_state_dict(tensors).tensors, layout="test")
    assert report.assigned == len(tensors)
    assert not report.set_aside
    assert trainable_params(model) == manifest["params"]
    assert keras_res2net.get_variant(variant).reference_params == manifest["params"]


def reduced_checkpoint() -> dict[str, np.ndarray]:
    return ReferenceFixture(REDUCED).state_dict()


def reduced_model(**kwargs):
    kwargs.setdefault("layers", (2, 1, 1, 1))
    return keras_res2net.create_model("res2net50_26w_4s", input_shape=(64, 64, 3), **kwargs)


def test_missing_and_unused_keys_are_named(save_safetensors):
    tensors = reduced_checkpoint()
    del tensors["layer1.1.convs.1.weight"]
    tensors["layer9.0.conv1.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError, match="no checkpoint tensor") as error:
        reduced_model(weights=save_safetensors(tensors))
    message = str(error.value)
    assert "layer1.1.convs.1.weight" in message and "no checkpoint tensor" in message
    assert "layer9.0.conv1.weight (4, 4, 1, 1)" in message and "match no model weight" in message


def test_shape_mismatch_names_keys_and_shapes(save_safetensors):
    with pytest.raises(CheckpointMismatchError, match=r"layer1\.0\.conv1\.weight: checkpoint "
                       r"\(1, 1, 64, 104\).*model layer1_0_conv1/kernel \(1, 1, 64, 56\)"):
        reduced_model(weights=save_safetensors(reduced_checkpoint()), base_width=14)


def test_v1_checkpoint_into_v1b_model_is_refused(save_safetensors):
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.0\.weight.*conv1\.weight"):
        reduced_model(weights=save_safetensors(reduced_checkpoint()), v1b=True)


def test_classifier_size_and_backbone_only_checks(save_safetensors):
    path = save_safetensors(reduced_checkpoint())
    with pytest.raises(ValueError, match="1000-class classifier but classes=10"):
        reduced_model(weights=path, classes=10)
    backbone = {k: v for k, v in reduced_checkpoint().items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="backbone-only checkpoint"):
        reduced_model(weights=save_safetensors(backbone, "backbone.safetensors"))


def test_headless_model_sets_classifier_aside(save_safetensors):
    from keras_res2net.weights import TorchWeights

    source = TorchWeights(save_safetensors(reduced_checkpoint()))
    model = reduced_model(include_top=False)
    source.load_into(model)
    assert source.report.set_aside["fc.weight"].startswith("classifier unused")
    assert "fc.bias" in source.report.summary()


def test_wrappers_and_prefixes_are_unwrapped():
    tensors = {f"module.backbone.{k}": v for k, v in reduced_checkpoint().items()}
    tensors["module.neck.conv.weight"] = np.zeros((1,), np.float32)
    tensors["module.backbone.bn1.num_batches_tracked"] = np.zeros((), np.int64)
    checkpoint = normalize_state_dict({"state_dict": tensors, "meta": {"epoch": 3}})
    assert checkpoint.layout == "v1" and "conv1.weight" in checkpoint.tensors
    assert "neck" in " ".join(checkpoint.set_aside) and "bn1.num_batches_tracked" in " ".join(
        checkpoint.set_aside)


def test_unrecognised_layout_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="Unrecognised checkpoint layout"):
        normalize_state_dict({"encoder.weight": np.zeros(3, np.float32)})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        reduced_model(weights=str(broken))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reduced_model(weights=str(tmp_path / "absent.pth"))


def test_pth_without_torch_says_which_extra(monkeypatch, tmp_path):
    import sys

    path = tmp_path / "model.pth"
    path.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"keras-res2net\[torch\]"):
        reduced_model(weights=str(path))


def test_seeded_parameters_cover_every_trainable_key():
    shapes = MANIFESTS["res2net50_26w_4s"]["keys"]
    params = seeded_parameters(shapes)
    assert set(shapes) - set(params) == {k for k in shapes if k.endswith(("running_mean",
                                                                          "running_var"))}


def test_official_dla_project_layers_are_set_aside(save_safetensors):
    """The official DLA code builds project layers in multi-level trees that its forward pass
    never calls (timm dropped them); a checkpoint holding them still loads."""
    from keras_res2net.weights import TorchWeights

    manifest = MANIFESTS["dla60_res2net"]["keys"]
    tensors = {key: np.ones(shape, np.float32) for key, shape in manifest.items()}
    tensors["level3.project.0.weight"] = np.zeros((256, 128, 1, 1), np.float32)
    tensors["level3.project.1.running_var"] = np.ones((256,), np.float32)
    source = TorchWeights(save_safetensors(tensors))
    model = keras_res2net.Res2NetDLA60()
    source.load_into(model)
    assert source.report.set_aside["level3.project.0.weight"].startswith("never used")
    assert source.report.assigned == len(manifest)


def test_load_report_is_logged(save_safetensors, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="keras_res2net.weights"):
        reduced_model(weights=save_safetensors(reduced_checkpoint()), include_top=False)
    assert "loaded" in caplog.text and "fc.weight (classifier unused" in caplog.text

"""The mmdetection detector converter: published layouts, layout transforms, CLI, bad input.

The full-size key manifests in tests/fixtures/mmdet/manifests are the state dicts of the five
published Res2Net-101 detectors (mmdetection 3.x names; 2.x files use the same model keys):
mapping zeros of those shapes proves every published tensor has a place. The numerical tests
compare the layout changes with NumPy re-implementations of the PyTorch layers. The rest runs
on the small synthetic experiments with `.safetensors` written from Keras models through the
inverse mapping (torch is not needed; the `.pth` cases are skipped without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_res2net.detection import configs, weight_map
from keras_res2net.detection import convert as convert_lib
from keras_res2net.detection.experiment_io import load_experiment, save_experiment
from keras_res2net.detection.mmdet_checkpoint import (
    DetectorCheckpointError,
    MMDetCheckpoint,
    check_architecture,
)

MANIFESTS = Path(__file__).parent.parent / "fixtures" / "mmdet" / "manifests"
PUBLISHED = {  # manifest (published file's config) -> the experiment that holds it
    "faster_rcnn_r2_101_fpn_2x_coco": "faster_rcnn_res2net101_fpn_coco",
    "mask_rcnn_r2_101_fpn_2x_coco": "mask_rcnn_res2net101_fpn_coco",
    "cascade_rcnn_r2_101_fpn_20e_coco": "cascade_rcnn_res2net101_fpn_coco",
    "cascade_mask_rcnn_r2_101_fpn_20e_coco": "cascade_mask_rcnn_res2net101_fpn_coco",
    "htc_r2_101_fpn_20e_coco": "htc_res2net101_fpn_coco",
}
rng = np.random.default_rng


def synthetic(name: str, **model_changes) -> configs.ExperimentConfig:
    """A synthetic experiment with a fixed RoIAlign grid (independent of the adaptive
    sampling the test-time code may change) and few proposals and detections (fast)."""
    config = configs.get_experiment(name)
    config.model.roi.sampling_ratio = 2
    config.model.rpn.test_pre_nms_topk = config.model.rpn.pre_nms_topk = 60
    config.model.rpn.post_nms_topk = 20
    config.model.detection.max_detections = 10
    for key, value in model_changes.items():
        setattr(config.model, key, value)
    return config


def randomize(model, seed: int = 0) -> None:
    """Seeded weights everywhere (positive BatchNorm variances) so mixups show."""
    generator = rng(seed)
    for variable in model.weights:
        value = generator.normal(0.0, 0.05, tuple(variable.shape)).astype("float32")
        if "moving_variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value)


def source_model(config):
    model = convert_lib.build_empty_detector(config)
    randomize(model)
    return model


@pytest.fixture(scope="module")
def synthetic_models():
    """Seeded detectors of four synthetic architectures, built without a call."""
    return {name: source_model(synthetic(f"{name}_res2net50_fpn_synthetic"))
            for name in ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "htc")}


@pytest.fixture(scope="module")
def synthetic_states(synthetic_models):
    """Their mmdetection-layout state dicts (what a .pth of theirs would hold)."""
    return {name: weight_map.to_mmdet_state_dict(model)
            for name, model in synthetic_models.items()}


def write(tmp_path: Path, state: dict, name: str = "model.safetensors") -> str:
    path = tmp_path / name
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return str(path)


# -- the published layouts ------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_backbone():
    """One full R2-101 backbone shared by the five detectors (building it costs ~10 s; the
    backbone mapping is checked in every test all the same)."""
    from keras_res2net.detection.modeling.backbone import build_backbone

    return build_backbone(configs.get_experiment("mask_rcnn_res2net101_fpn_coco").model.backbone)


@pytest.mark.parametrize("manifest", sorted(PUBLISHED))
def test_published_layout_maps_completely(manifest, coco_backbone):
    """Every tensor of the published file has exactly one Keras weight of the right shape."""
    from keras_res2net.detection.modeling.factory import build_detector

    payload = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    shapes = payload["state_dict"]
    state = {key: np.zeros(shape, np.int64 if key.endswith("num_batches_tracked")
                           else np.float32) for key, shape in shapes.items()}
    checkpoint = MMDetCheckpoint.from_state_dict({"meta": {}, "state_dict": state},
                                                 source=manifest)
    experiment = PUBLISHED[manifest]
    config = configs.get_experiment(experiment)
    assert checkpoint.architecture == config.model.architecture
    check_architecture(checkpoint, config.model, experiment, configs.list_experiments())
    assert convert_lib.adapt_config(config, checkpoint) == []  # the experiment is the file's
    model = build_detector(config.model, coco_backbone)
    weight_map.build_variables(model)
    pairs = weight_map.map_checkpoint(model, checkpoint)
    assert len(pairs) == len(model.weights) == len(shapes) - len(checkpoint.set_aside)
    assert {slot.key for slot, _ in pairs} == set(checkpoint.tensors)
    assert all(key.endswith("num_batches_tracked") for key in checkpoint.set_aside)
    assert payload["num_entries"] == len(shapes)


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "cascade_rcnn", "htc"])
def test_variables_built_without_a_call_match_a_call(synthetic_models, name):
    """`build_variables` (what `DetectionTask.build_model` uses) creates exactly the
    variables (paths, shapes, order) a call does, for every architecture."""
    from keras_res2net.detection.modeling.backbone import build_backbone
    from keras_res2net.detection.modeling.factory import build_detector

    config = synthetic(f"{name}_res2net50_fpn_synthetic").model
    called = build_detector(config, build_backbone(config.backbone))
    called(np.zeros((1, 64, 64, 3), np.float32))
    built = synthetic_models[name]

    def layout(model):
        return [(v.path.split("/", 1)[1], tuple(v.shape)) for v in model.weights]

    assert layout(called) == layout(built)


# -- the layout changes against NumPy re-implementations of the PyTorch layers --------------
def _slots_assign(slots, tensors):
    for slot in slots:
        slot.variable.assign(slot.transform.to_keras(tensors[slot.key]))


@pytest.mark.parametrize("agnostic", [False, True])
def test_box_head_matches_pytorch_shared2fc(agnostic):
    """CHW-flattened first FC, background-last fc_cls, class-major or agnostic fc_reg."""
    from keras_res2net.detection.modeling.heads import BoxHead

    channels, size, dim, classes, rois = 6, 7, 16, 3, 5
    g = rng(1)
    t = {"shared_fcs.0.weight": g.normal(size=(dim, channels * size * size)),
         "shared_fcs.0.bias": g.normal(size=dim),
         "shared_fcs.1.weight": g.normal(size=(dim, dim)), "shared_fcs.1.bias": g.normal(size=dim),
         "fc_cls.weight": g.normal(size=(classes + 1, dim)),
         "fc_cls.bias": g.normal(size=classes + 1)}
    boxes = 1 if agnostic else classes
    t["fc_reg.weight"] = g.normal(size=(4 * boxes, dim))
    t["fc_reg.bias"] = g.normal(size=4 * boxes)
    t = {f"h.{k}": v.astype("float32") for k, v in t.items()}
    features = g.normal(size=(rois, channels, size, size)).astype("float32")  # PyTorch NCHW

    # PyTorch: x.flatten(1) (C, H, W order), two Linear + ReLU, fc_cls / fc_reg.
    x = features.reshape(rois, -1)
    for i in range(2):
        x = np.maximum(x @ t[f"h.shared_fcs.{i}.weight"].T + t[f"h.shared_fcs.{i}.bias"], 0)
    cls = x @ t["h.fc_cls.weight"].T + t["h.fc_cls.bias"]
    reg = x @ t["h.fc_reg.weight"].T + t["h.fc_reg.bias"]

    head = BoxHead(classes, dim, class_agnostic=agnostic)
    head.build((None, None, size, size, channels))
    _slots_assign(weight_map.box_head_slots(head, "h", size), t)
    logits, deltas = head(features.transpose(0, 2, 3, 1)[None])
    logits, deltas = np.asarray(logits)[0], np.asarray(deltas)[0]
    np.testing.assert_allclose(logits[:, 0], cls[:, classes], rtol=1e-4, atol=1e-4)  # bg
    np.testing.assert_allclose(logits[:, 1:], cls[:, :classes], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas, reg.reshape(rois, boxes, 4), rtol=1e-4, atol=1e-4)


def conv_transpose_reference(x, weight, bias, stride):
    """PyTorch ConvTranspose2d (padding 0): out[o, s*i + a, s*j + b] += x[c, i, j] w[c, o, a, b]."""
    channels, height, width = x.shape
    _, out_channels, kh, kw = weight.shape
    out = np.zeros((out_channels, (height - 1) * stride + kh, (width - 1) * stride + kw))
    for i in range(height):
        for j in range(width):
            patch = np.einsum("c,coab->oab", x[:, i, j], weight)
            out[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += patch
    return out + bias[:, None, None]


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2)])
def test_conv_transpose_needs_no_flip(kernel, stride):
    """(in, out, kh, kw) -> (kh, kw, out, in) reproduces ConvTranspose2d, overlapping taps too."""
    import keras

    g = rng(2)
    x = g.normal(size=(3, 4, 5)).astype("float32")
    weight = g.normal(size=(3, 2, kernel, kernel)).astype("float32")
    bias = g.normal(size=2).astype("float32")
    layer = keras.layers.Conv2DTranspose(2, kernel, strides=stride)
    layer.build((None, 4, 5, 3))
    layer.kernel.assign(weight_map.DECONV.to_keras(weight))
    layer.bias.assign(bias)
    ours = np.asarray(layer(x.transpose(1, 2, 0)[None]))[0].transpose(2, 0, 1)
    np.testing.assert_allclose(ours, conv_transpose_reference(x, weight, bias, stride),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(weight_map.DECONV.to_mmdet(weight_map.DECONV.to_keras(weight)),
                                  weight)


def conv_reference(x, weight, bias):
    """PyTorch Conv2d, stride 1, padding k // 2, on (C, H, W)."""
    pad = weight.shape[-1] // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    height, width = x.shape[1:]
    out = np.zeros((weight.shape[0], height, width))
    for a in range(weight.shape[2]):
        for b in range(weight.shape[3]):
            out += np.einsum("chw,oc->ohw", padded[:, a:a + height, b:b + width],
                             weight[:, :, a, b])
    return out + bias[:, None, None]


def test_htc_mask_head_matches_pytorch():
    """HTCMaskHead: conv_res(residual) + input, 3x3 convs, deconv + ReLU, conv_logits."""
    from keras_res2net.detection.modeling.heads import MaskHead

    channels, size, classes = 4, 6, 3
    g = rng(3)
    t = {}
    for name, shape in [("convs.0.conv", (channels, channels, 3, 3)),
                        ("convs.1.conv", (channels, channels, 3, 3)),
                        ("upsample", (channels, channels, 2, 2)),
                        ("conv_logits", (classes, channels, 1, 1)),
                        ("conv_res.conv", (channels, channels, 1, 1))]:
        t[f"m.{name}.weight"] = g.normal(0, 0.5, size=shape).astype("float32")
        t[f"m.{name}.bias"] = g.normal(0, 0.5, size=shape[1] if name == "upsample"
                                       else shape[0]).astype("float32")
    x = g.normal(size=(channels, size, size)).astype("float32")
    residual = g.normal(size=(channels, size, size)).astype("float32")

    def relu(v):
        return np.maximum(v, 0)

    h = x + relu(conv_reference(residual, t["m.conv_res.conv.weight"], t["m.conv_res.conv.bias"]))
    for i in range(2):
        h = relu(conv_reference(h, t[f"m.convs.{i}.conv.weight"], t[f"m.convs.{i}.conv.bias"]))
    up = relu(conv_transpose_reference(h, t["m.upsample.weight"], t["m.upsample.bias"], 2))
    logits = conv_reference(up, t["m.conv_logits.weight"], t["m.conv_logits.bias"])

    head = MaskHead(classes, channels, num_convs=2, with_conv_res=True)
    head.build((None, None, size, size, channels))
    _slots_assign(weight_map.mask_head_slots(head, "m"), t)
    ours = head(x.transpose(1, 2, 0)[None, None], residual.transpose(1, 2, 0)[None, None])
    np.testing.assert_allclose(np.asarray(ours)[0, 0].transpose(2, 0, 1), logits,
                               rtol=1e-4, atol=1e-4)


def test_transforms_are_exact_inverses():
    g = rng(4)
    for transform, shape in [(weight_map.CONV, (5, 3, 3, 3)), (weight_map.DECONV, (3, 5, 2, 2)),
                             (weight_map.LINEAR, (4, 6)), (weight_map.CLS_WEIGHT, (4, 6)),
                             (weight_map.CLS_BIAS, (4,)), (weight_map.linear_chw(7), (8, 98))]:
        value = g.normal(size=shape)
        np.testing.assert_array_equal(transform.to_mmdet(transform.to_keras(value)), value)
    bias = np.arange(4.0)  # classes 0, 1, 2 then background
    np.testing.assert_array_equal(weight_map.CLS_BIAS.to_keras(bias), [3.0, 0.0, 1.0, 2.0])


def test_backbone_keys_agree_with_the_backbone_converter(synthetic_models, synthetic_states):
    """The detector plan's backbone part (mmdetection's `stem.*` names) fills the same weights
    as keras_res2net.checkpoints does for a mmdetection backbone file."""
    from keras_res2net.checkpoints import assign_state_dict, normalize_state_dict
    from keras_res2net.detection.modeling.backbone import build_backbone

    state = {k: v for k, v in synthetic_states["mask_rcnn"].items() if k.startswith("backbone.")}
    normalized = normalize_state_dict({"state_dict": state})
    assert normalized.layout == "mmdet"
    config = synthetic("mask_rcnn_res2net50_fpn_synthetic")
    backbone = build_backbone(config.model.backbone)
    assign_state_dict(backbone, normalized.tensors, layout="mmdet")
    ours = synthetic_models["mask_rcnn"].backbone
    for mine, theirs in zip(ours.weights, backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine.numpy()), np.asarray(theirs.numpy()))


def test_weights_file_name_is_the_trainers():
    from keras_res2net.detection.trainer import WEIGHTS

    assert convert_lib.WEIGHTS_FILE == WEIGHTS


# -- round trip and the command line ------------------------------------------------------
def test_round_trip_is_exact(synthetic_states):
    """to_mmdet_state_dict then load_mmdet_state_dict gives the same weights back."""
    config = synthetic("htc_res2net50_fpn_synthetic")
    model = convert_lib.build_empty_detector(config)
    report = weight_map.load_mmdet_state_dict(model, synthetic_states["htc"])
    assert report.assigned == len(model.weights)
    assert set(report.set_aside.values()) == {"BatchNorm step counter (not used at inference)"}
    again = weight_map.to_mmdet_state_dict(model)
    assert set(again) == set(synthetic_states["htc"])
    for key, value in again.items():
        np.testing.assert_array_equal(value, synthetic_states["htc"][key], err_msg=key)


def test_cli_converts_and_the_folder_reloads(tmp_path, capsys, synthetic_models):
    """mmdet-layout .safetensors -> DIR; a detector rebuilt from DIR gives the same outputs."""
    from keras_res2net.detection.task import DetectionTask

    source = synthetic_models["mask_rcnn"]
    path = write(tmp_path, weight_map.to_mmdet_state_dict(source))
    save_experiment(synthetic("mask_rcnn_res2net50_fpn_synthetic"), tmp_path / "exp")
    output = tmp_path / "run"
    code = convert_lib.main([path, "--experiment", str(tmp_path / "exp" / "experiment.json"),
                             "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in output.iterdir()) == ["detector.weights.h5", "experiment.json"]
    assert f"{len(source.weights)} tensors used" in printed and "Mask R-CNN" in printed
    assert str(output) in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "model.safetensors", "run"]

    reloaded = DetectionTask(load_experiment(output)).build_model()
    reloaded.load_weights(str(output / "detector.weights.h5"))
    images = rng(5).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    features, again = source.extract(images), reloaded.extract(images)
    for level in features:
        np.testing.assert_array_equal(np.asarray(features[level]), np.asarray(again[level]))
    expected, got = source(images), reloaded(images)
    assert set(expected) == {"boxes", "scores", "classes", "num_detections", "masks"}
    for key in expected:
        np.testing.assert_array_equal(np.asarray(expected[key]), np.asarray(got[key]))


def test_checkpoint_fixes_depth_width_and_classes(synthetic_states):
    """An R2 file of another depth / width / class count loads under the experiment's name,
    with what it has recorded in the config (as an R2-50 file under an r101 name would)."""
    config = synthetic("faster_rcnn_res2net50_fpn_synthetic", num_classes=5)
    config.model.backbone.layers = (1, 2, 1, 1)
    config.model.backbone.base_width = 4
    state = weight_map.to_mmdet_state_dict(source_model(config))
    result = convert_lib.convert_checkpoint(state, synthetic("faster_rcnn_res2net50_fpn_synthetic"))
    backbone = result.config.model.backbone
    assert (backbone.layers, backbone.base_width, result.config.model.num_classes) == (
        (1, 2, 1, 1), 4, 5)
    assert len(result.notes) == 3 and "(1, 2, 1, 1)" in result.notes[0]
    assert result.model.box_head.num_classes == 5


def test_from_mmdet_reads_wrapped_files(tmp_path, synthetic_states):
    """2.x/3.x wrap the weights in {"meta", "state_dict"}; safetensors files are flat."""
    import keras_res2net.detection as detection

    state = synthetic_states["faster_rcnn"]
    experiment = synthetic("faster_rcnn_res2net50_fpn_synthetic")
    model = detection.from_mmdet(write(tmp_path, state), experiment)
    assert len(model.weights) == len([k for k in state if not k.endswith("tracked")])
    wrapped = {"meta": {"CLASSES": ("a", "b", "c")}, "message_hub": {}, "state_dict": state}
    model = detection.from_mmdet(wrapped, synthetic("faster_rcnn_res2net50_fpn_synthetic"))
    assert model.config.num_classes == 3


# -- bad input ------------------------------------------------------------------------------
def run_cli(path, experiment, output, *extra):
    return convert_lib.main([str(path), "--experiment", experiment, "--output", str(output),
                             *extra])


def test_classification_checkpoint_is_refused(tmp_path, capsys, synthetic_states):
    backbone = {k: v for k, v in synthetic_states["faster_rcnn"].items()
                if k.startswith("backbone.")} | {"head.fc.weight": np.zeros((10, 2048))}
    path = write(tmp_path, backbone, "cls.safetensors")
    assert run_cli(path, "mask_rcnn_res2net50_fpn_synthetic", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "cls.safetensors" in err and "no neck (neck.*)" in err and "classification" in err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DetectorCheckpointError):  # --verbose shows the exception itself
        run_cli(path, "mask_rcnn_res2net50_fpn_synthetic", tmp_path / "out", "--verbose")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("have,experiment,words", [
    ("faster_rcnn", "mask_rcnn_res2net50_fpn_synthetic",
     ["no mask head (roi_head.mask_head.*)", "It is a Faster R-CNN",
      "use faster_rcnn_res2net50_fpn_synthetic"]),
    ("cascade_rcnn", "faster_rcnn_res2net50_fpn_synthetic",
     ["3 cascade bbox_heads (roi_head.bbox_head.0-2.*)", "one bbox_head (roi_head.bbox_head.*)",
      "It is a Cascade R-CNN", "use cascade_rcnn_res2net50_fpn_synthetic"]),
    ("mask_rcnn", "cascade_mask_rcnn_res2net101_fpn_coco",
     ["one bbox_head", "It is a Mask R-CNN", "use mask_rcnn_res2net101_fpn_coco"]),
    ("htc", "cascade_mask_rcnn_res2net50_fpn_synthetic",
     ["semantic head (roi_head.semantic_head.*)", "conv_res", "It is an HTC",
      "use htc_res2net50_fpn_synthetic"]),
])
def test_another_detector_is_named(tmp_path, capsys, synthetic_states, have, experiment, words):
    output = tmp_path / "out"
    output.mkdir()  # an empty folder may be the target; it must stay as it was
    path = write(tmp_path, synthetic_states[have], f"{have}.safetensors")
    assert run_cli(path, experiment, output) == 1
    err = capsys.readouterr().err
    for text in [f"{have}.safetensors", experiment, *words]:
        assert text in err, (text, err)
    assert list(output.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{have}.safetensors", "out"]


def test_every_key_and_shape_problem_in_one_error(synthetic_states):
    state = dict(synthetic_states["faster_rcnn"])
    del state["neck.fpn_convs.1.conv.bias"]
    state["rpn_head.rpn_cls.weight"] = np.zeros((6, 64, 1, 1), np.float32)
    state["roi_head.bbox_head.extra.weight"] = np.zeros((2, 2), np.float32)
    model = convert_lib.build_empty_detector(synthetic("faster_rcnn_res2net50_fpn_synthetic"))
    before = [np.asarray(v.numpy()).copy() for v in model.weights]
    with pytest.raises(DetectorCheckpointError) as error:
        weight_map.load_mmdet_state_dict(model, state, source="bad.pth")
    message = str(error.value)
    for text in ["bad.pth", "neck.fpn_convs.1.conv.bias", "rpn_head.rpn_cls.weight (6, 64, 1, 1)",
                 "(1, 1, 64, 3)", "roi_head.bbox_head.extra.weight (2, 2)"]:
        assert text in message, (text, message)
    for old, variable in zip(before, model.weights, strict=True):  # nothing half-loaded
        np.testing.assert_array_equal(old, np.asarray(variable.numpy()))


def test_mmdetection_1x_layout_is_refused(synthetic_states):
    state = {k.replace("roi_head.", ""): v for k, v in synthetic_states["faster_rcnn"].items()}
    with pytest.raises(DetectorCheckpointError, match="1.x checkpoint.*upgrade_model_version"):
        convert_lib.convert_checkpoint(state, "faster_rcnn_res2net50_fpn_synthetic")


def test_missing_and_truncated_files(tmp_path, capsys, synthetic_states):
    missing = tmp_path / "nowhere.safetensors"
    assert run_cli(missing, "faster_rcnn_res2net50_fpn_synthetic", tmp_path / "out") == 1
    assert "nowhere.safetensors" in capsys.readouterr().err
    path = Path(write(tmp_path, synthetic_states["faster_rcnn"], "cut.safetensors"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert run_cli(path, "faster_rcnn_res2net50_fpn_synthetic", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "cut.safetensors" in err and "not a readable .safetensors" in err
    assert not (tmp_path / "out").exists()


def test_pth_without_torch_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    path = tmp_path / "mask_rcnn_r2_101_fpn_2x_coco-17f061e8.pth"
    path.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert run_cli(path, "mask_rcnn_res2net101_fpn_coco", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "17f061e8.pth" in err and "keras-res2net[torch]" in err and ".safetensors" in err
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2_and_touch_nothing(tmp_path, capsys, synthetic_states):
    path = write(tmp_path, synthetic_states["faster_rcnn"])
    assert run_cli(path, "no_such_experiment", tmp_path / "out") == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert run_cli(path, "faster_rcnn_res2net50_fpn_synthetic", output) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_failed_write_leaves_the_folder_as_it_was(tmp_path, monkeypatch, synthetic_states):
    """A failure after staging (here the reload check) removes the staging folder and keeps
    the old DIR; --force then replaces it."""
    path = write(tmp_path, synthetic_states["faster_rcnn"])
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")

    def broken(model, folder):
        raise RuntimeError("reloaded weight x differs from the converted one.")

    monkeypatch.setattr(convert_lib, "verify_reload", broken)
    assert run_cli(path, "faster_rcnn_res2net50_fpn_synthetic", output, "--force") == 1
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "out"]
    monkeypatch.undo()
    assert run_cli(path, "faster_rcnn_res2net50_fpn_synthetic", output, "--force") == 0
    assert sorted(p.name for p in output.iterdir()) == ["detector.weights.h5", "experiment.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "out"]


# -- .pth files (need torch; skipped without it) --------------------------------------------
def test_pth_files_2x_wrapper_truncated_and_pickled_code(tmp_path, synthetic_states):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in synthetic_states["faster_rcnn"].items()}
    good = tmp_path / "faster.pth"
    torch.save({"meta": {"mmdet_version": "2.2.0", "CLASSES": ("a", "b", "c")},
                "state_dict": state}, good)
    model = convert_lib.from_mmdet(good, synthetic("faster_rcnn_res2net50_fpn_synthetic"))
    assert model.config.num_classes == 3

    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pth"):
        convert_lib.from_mmdet(cut, "faster_rcnn_res2net50_fpn_synthetic")

    legacy = tmp_path / "legacy.pth"  # the pre-1.6 format of 2020-era checkpoints
    torch.save({"meta": {}, "state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    assert convert_lib.from_mmdet(legacy, "faster_rcnn_res2net50_fpn_synthetic").built

    scored = tmp_path / "scored.pth"  # NumPy data in meta (a score, a dtype) is allowed
    torch.save({"meta": {"best": np.float64(0.5), "dtype": np.dtype("float32"),
                         "hist": np.arange(3)}, "state_dict": state}, scored)
    assert convert_lib.from_mmdet(scored, "faster_rcnn_res2net50_fpn_synthetic").built

    pickled = tmp_path / "code.pth"
    torch.save({"state_dict": state, "meta": {"hook": Path("x")}}, pickled)
    with pytest.raises(ValueError, match=r"code\.pth.*pathlib.PosixPath.*weights_only") as error:
        convert_lib.from_mmdet(pickled, "faster_rcnn_res2net50_fpn_synthetic")
    assert "safetensors.torch.save_file" in str(error.value)
    assert "\n" not in str(error.value)

"""Prediction: overlays, COCO results files and the checks that come before the model.

The run folder (`small_run`, tests/detection/conftest.py) holds fresh weights of the
synthetic Mask R-CNN with narrow heads and images resized to fit 96x96, and its
`experiment.json`; predict must rebuild that config, not the registered experiment (whose
heads would not take the weights and whose 128x128 would give other scales). An untrained
detector returns plenty of low-score detections, which is all these tests need.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_res2net.detection import predict as predict_module
from keras_res2net.detection.predict import PALETTE, draw_detections, main

MAX_SIZE = 96  # the run folder's override (the experiment's default is 128)


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


@pytest.fixture(scope="module")
def trained(small_run):
    """The run folder's task and model, loaded the way evaluation loads them."""
    from keras_res2net.detection.trainer import load_trained

    return load_trained(None, small_run)


def _batch(image: np.ndarray, config, image_id: int = 0) -> dict:
    from keras_res2net.detection.data.pipeline import resize_and_pad

    example = {"image": image, "boxes": np.zeros((0, 4), np.float32),
               "classes": np.zeros((0,), np.int32),
               "masks": np.zeros((0, *image.shape[:2]), np.uint8),
               "image_id": np.int64(image_id)}
    inputs = resize_and_pad(example, config.data.max_size, config.data.size_divisor, None)
    return {k: tf.expand_dims(v, 0) for k, v in inputs.items()}


def _non_contiguous_set(root):
    """Two generated 64x64 images and their COCO JSON with image ids 41, 57 and category ids
    3, 7, 9 (listed out of order), so only the sorted-by-id mapping gets them right."""
    from keras_res2net.detection.data.synthetic import write_split

    data = json.loads(write_split(root, "val", 2, seed=11, size=64).read_text())
    new_category = {1: 3, 2: 7, 3: 9}
    new_image = {1: 41, 2: 57}
    data["categories"] = [{"id": new_category[c["id"]], "name": c["name"]}
                          for c in reversed(data["categories"])]
    for image in data["images"]:
        image["id"] = new_image[image["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = new_category[ann["category_id"]]
        ann["image_id"] = new_image[ann["image_id"]]
    path = root / "val_noncontiguous.json"
    path.write_text(json.dumps(data))
    return path, [root / "val" / image["file_name"] for image in data["images"]], data


def test_results_are_coco_results_with_coco_ids(tmp_path, small_run, trained, capsys):
    task, model = trained
    annotations, images, data = _non_contiguous_set(tmp_path)
    results = tmp_path / "out" / "results.json"
    code = main([*map(str, images), "--checkpoint", str(small_run), "--annotations",
                 str(annotations), "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    records = json.loads(results.read_text())
    assert [p.name for p in results.parent.iterdir()] == ["results.json"]  # no temp, no PNGs
    assert not (tmp_path / "predictions").exists()  # --results alone: no overlays
    ids = {image["file_name"]: image["id"] for image in data["images"]}
    category_ids = [3, 7, 9]  # class k -> the k-th category by id
    for path in images:
        batch = _batch(np.asarray(Image.open(path).convert("RGB")), task.config)
        expected = task.postprocess(task.validation_step(batch, model), batch)[0]
        mine = [r for r in records if r["file_name"] == str(path)]
        assert len(mine) == len(expected["scores"]) > 0  # every detection, no score filter
        assert {r["image_id"] for r in mine} == {ids[path.name]}
        boxes = expected["boxes"]
        xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0],
                         boxes[:, 3] - boxes[:, 1]], axis=1)
        np.testing.assert_allclose([r["bbox"] for r in mine], xywh, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose([r["score"] for r in mine], expected["scores"], rtol=1e-6)
        assert [r["category_id"] for r in mine] == [category_ids[int(c) - 1]
                                                    for c in expected["classes"]]
        for record, mask in zip(mine, expected["masks"], strict=True):
            assert isinstance(record["segmentation"]["counts"], str)
            rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle), mask)
    assert min(r["score"] for r in records) < 0.3  # below --min_score: kept for evaluation
    gt = COCO(str(annotations))
    detections = gt.loadRes(str(results))
    assert len(detections.getAnnIds()) == len(records)
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert len(evaluator.stats) == 12


def test_boxes_are_in_original_pixels_at_other_scales(tmp_path, small_run, trained):
    """A 64x48 image is enlarged 1.5x and a 160x192 one shrunk 0.5x to fit 96x96; the results
    hold the model's resized-image boxes divided by those scales (mmdetection's rescale: the
    model clipped them to the resized image). Without --annotations: image ids are
    positions, categories 1..K."""
    from keras_res2net.detection.data.synthetic import make_image

    task, model = trained
    rng = np.random.default_rng(5)
    small = make_image(rng, 64, 3)[0][:48]  # (48, 64): long side 64 -> 96
    large = np.asarray(Image.fromarray(make_image(rng, 96, 3)[0]).resize((160, 192)))
    paths = []
    for name, image in (("small.png", small), ("large.png", large)):
        Image.fromarray(image).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    results = tmp_path / "results.json"
    run = predict_module.predict(paths, small_run, results=results, out_dir=tmp_path / "png",
                                 min_score=0.0)
    assert run.config.data.max_size == (MAX_SIZE, MAX_SIZE)  # from experiment.json
    records = json.loads(results.read_text())
    for position, (image, scale) in enumerate(((small, 1.5), (large, 0.5))):
        batch = _batch(image, task.config, position)
        height, width = image.shape[:2]
        np.testing.assert_allclose(batch["scales"][0], [scale, scale])
        assert batch["images"].shape[1:3] == (MAX_SIZE, MAX_SIZE)  # 72x96, 96x80 padded
        outputs = {k: np.asarray(v) for k, v in task.validation_step(batch, model).items()}
        count = int(outputs["num_detections"][0])
        expected = outputs["boxes"][0, :count] / scale  # rescaled, not clipped again
        assert expected.min() >= 0 and expected[:, 0::2].max() <= width + 1
        assert expected[:, 1::2].max() <= height + 1
        mine = [r for r in records if r["file_name"] == paths[position]]
        assert len(mine) == count > 0
        assert {r["image_id"] for r in mine} == {position}
        assert {r["category_id"] for r in mine} <= {1, 2, 3}
        got = np.array([r["bbox"] for r in mine])
        got[:, 2:] += got[:, :2]
        np.testing.assert_allclose(got, expected, atol=1e-3)
        for record in mine:
            assert record["segmentation"]["size"] == [height, width]
        overlay = Image.open(tmp_path / "png" / f"{'small' if position == 0 else 'large'}.png")
        assert overlay.size == (width, height)


def test_image_ids_from_annotations_or_positions(tmp_path, small_run, capsys):
    """An image the annotations name gets its COCO id; one they don't, its position."""
    annotations, images, _ = _non_contiguous_set(tmp_path)
    stranger = tmp_path / "elsewhere.png"
    Image.open(images[1]).save(stranger)
    run = predict_module.predict([images[1], stranger], small_run, annotations=annotations,
                                 results=tmp_path / "r.json")
    assert {r["file_name"]: r["image_id"] for r in run.records} == {str(images[1]): 57,
                                                                    str(stranger): 1}
    assert "1 of the 2 images are not in" in capsys.readouterr().err


def _refuses(argv, code, capsys, *needles):
    assert main(argv) == code
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_fail_fast_in_one_line(tmp_path, small_run, capsys, monkeypatch):
    """Each refusal comes before the model is built (building it would fail here), prints
    one line per problem without a traceback, and creates no --out_dir."""
    from keras_res2net.detection.task import DetectionTask

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(DetectionTask, "build_model", no_model)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    out = tmp_path / "overlays"
    base = ["--out_dir", str(out)]

    err = _refuses([str(good), str(corrupt), str(tmp_path / "missing.jpg"), "--checkpoint",
                    str(small_run), *base], 1, capsys, f"cannot read image {corrupt}",
                   f"cannot read image {tmp_path / 'missing.jpg'} (no such file)")
    assert len(err.strip().splitlines()) == 2 and str(good) not in err
    _refuses([str(good), "--checkpoint", str(tmp_path / "nowhere"), *base], 2, capsys,
             "no such run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refuses([str(good), "--checkpoint", str(empty), *base], 2, capsys,
             "no detector.weights.h5")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "detector.weights.h5").write_bytes((small_run / "detector.weights.h5").read_bytes())
    err = _refuses([str(good), "--checkpoint", str(bare), *base], 2, capsys,
                   "has no experiment.json", "--experiment")
    assert len(err.strip().splitlines()) == 1
    _refuses([str(good), "--checkpoint", str(small_run), "--experiment",
              "faster_rcnn_res2net50_fpn_synthetic", *base], 2, capsys,
             "belongs to another experiment", "model.include_mask")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    _refuses([str(good), "--checkpoint", str(small_run), "--annotations", str(bad_json),
              *base], 2, capsys, "--annotations")
    assert not out.exists()
    assert main([str(corrupt), "--checkpoint", str(small_run), "--verbose", *base]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert not out.exists()

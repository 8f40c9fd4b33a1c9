"""The synthetic generator, the COCO loader's validation and the input pipeline."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_res2net.detection.data.coco import load_coco
from keras_res2net.detection.data.pipeline import build_dataset, resize_and_pad
from keras_res2net.detection.data.synthetic import write_split


def test_generator_is_deterministic(tmp_path, shapes_val):
    json_path = write_split(tmp_path, "val", 6, seed=7)
    assert json_path.read_bytes() == shapes_val[0].read_bytes()
    for name in ("000001.png", "000006.png"):
        assert (tmp_path / "val" / name).read_bytes() == (shapes_val[1] / name).read_bytes()


def test_boxes_are_the_tight_boxes_of_the_masks(shapes_val):
    dataset = load_coco(*shapes_val)
    assert sum(len(r.classes) for r in dataset.records) >= 6
    for record in dataset.records:
        for box, mask in zip(record.boxes, record.load_masks(), strict=True):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def _corrupt(shapes_val, tmp_path, change):
    data = json.loads(shapes_val[0].read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][2].update(category_id=9), "category_id 9"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[64, 64]), "segmentation size"),
])
def test_bad_annotation_names_image_and_annotation(shapes_val, tmp_path, change, message):
    path = _corrupt(shapes_val, tmp_path, change)
    with pytest.raises(ValueError, match=message) as error:
        load_coco(path, shapes_val[1])
    image_id = json.loads(path.read_text())["annotations"][2]["image_id"]
    assert "annotation 3 of image" in str(error.value)
    assert f"image {image_id} ({image_id:06d}.png)" in str(error.value)


def test_dangling_image_id_and_missing_file_fail(shapes_val, tmp_path):
    path = _corrupt(shapes_val, tmp_path, lambda d: d["annotations"][0].update(image_id=99))
    with pytest.raises(ValueError, match="annotation 1 refers to image_id 99"):
        load_coco(path, shapes_val[1])
    with pytest.raises(ValueError, match=r"image 1 \(000001.png\) is missing"):
        load_coco(shapes_val[0], tmp_path)


def test_resize_flip_pad_by_hand():
    image = np.zeros((50, 100, 3), np.uint8)
    masks = np.zeros((1, 50, 100), np.uint8)
    masks[0, 10:20, 0:15] = 1  # the left half of its 30x10 box
    example = {"image": image, "boxes": np.array([[0, 10, 30, 20]], np.float32),
               "classes": np.array([1], np.int32), "masks": masks,
               "image_id": np.int64(5)}
    # Fit (long 80, short 80): factor min(0.8, 1.6) = 0.8 -> 40x80, padded to 64x96.
    out = resize_and_pad(example, (80, 80), 32, tf.constant(True), mask_crop_size=10)
    assert out["images"].shape == (64, 96, 3) and out["mask_crops"].shape == (1, 10, 10)
    np.testing.assert_allclose(out["scales"], [0.8, 0.8])
    np.testing.assert_allclose(out["boxes"], [[80 - 24, 8, 80, 16]])  # flipped in width 80
    # The crop samples the box at 10x10 cell centres: left half set, then flipped with it.
    expected = np.zeros((10, 10), np.uint8)
    expected[:, 5:] = 1
    np.testing.assert_array_equal(out["mask_crops"][0], expected)
    unflipped = resize_and_pad(example, (80, 80), 32, tf.constant(False), mask_crop_size=10)
    np.testing.assert_array_equal(unflipped["mask_crops"][0], expected[:, ::-1])


def test_image_without_objects():
    example = {"image": np.zeros((50, 70, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
               "classes": np.zeros((0,), np.int32), "masks": np.zeros((0, 50, 70), np.uint8),
               "image_id": np.int64(1)}
    out = resize_and_pad(example, (140, 100), 32, None)
    assert out["images"].shape == (128, 160, 3) and out["mask_crops"].shape == (0, 112, 112)


def test_dataset_batches_padded_ground_truth(shapes_val):
    dataset = load_coco(*shapes_val)
    batch = next(iter(build_dataset(dataset, batch_size=3, max_size=(128, 128),
                                    max_instances=8)))
    assert batch["images"].shape == (3, 128, 128, 3)
    assert batch["boxes"].shape == (3, 8, 4) and batch["mask_crops"].shape == (3, 8, 112, 112)
    counts = (np.asarray(batch["classes"]) > 0).sum(1)
    np.testing.assert_array_equal(counts, [len(r.classes) for r in dataset.records[:3]])


# -- semantic maps (HTC's semantic branch) ---------------------------------------------------
def test_semantic_maps_leave_images_and_json_unchanged(shapes_val, shapes_semantic, tmp_path):
    assert shapes_semantic[0].read_bytes() == shapes_val[0].read_bytes()
    for name in ("000001.png", "000006.png"):
        assert (shapes_semantic[1] / name).read_bytes() == (shapes_val[1] / name).read_bytes()
    again = write_split(tmp_path, "val", 6, seed=7, semantic=True)
    assert again.read_bytes() == shapes_val[0].read_bytes()
    for name in ("000001.png", "000006.png"):
        assert ((tmp_path / "val_semantic" / name).read_bytes()
                == (shapes_semantic[2] / name).read_bytes())


def test_synthetic_semantic_map_labels_shapes_and_rings(shapes_semantic):
    dataset = load_coco(*shapes_semantic[:2], semantic_dir=shapes_semantic[2])
    for record in dataset.records:
        label_map = record.load_semantic()
        assert label_map.shape == (record.height, record.width) and label_map.dtype == np.uint8
        covered = np.zeros(label_map.shape, bool)
        for category, mask in zip(record.classes, record.load_masks(), strict=True):
            np.testing.assert_array_equal(label_map[mask > 0], category)
            covered |= mask > 0
        assert (label_map[~covered] != 0).sum() > 0  # the ignore ring
        assert set(np.unique(label_map[~covered])) <= {0, 255}
        ring = label_map == 255
        # Every ignored pixel touches a shape (8-neighbourhood); shapes never touch background.
        near = np.zeros_like(covered)
        padded = np.pad(covered, 1)
        for dy in range(3):
            for dx in range(3):
                near |= padded[dy:dy + covered.shape[0], dx:dx + covered.shape[1]]
        assert (near[ring]).all() and not (near & ~covered & (label_map == 0)).any()


def test_loader_attaches_semantic_maps_and_refuses_bad_ones(shapes_semantic, tmp_path):
    json_path, images, semantic = shapes_semantic
    dataset = load_coco(json_path, images, semantic_dir=semantic)
    assert [r.semantic_path for r in dataset.records] == [
        semantic / f"{r.image_id:06d}.png" for r in dataset.records]
    assert load_coco(json_path, images).records[0].semantic_path is None
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in semantic.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "000003.png").unlink()
    with pytest.raises(ValueError, match=r"image 3 \(000003.png\) has no semantic map"):
        load_coco(json_path, images, semantic_dir=broken)
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(broken / "000003.png")
    with pytest.raises(ValueError, match=r"image 3 \(000003.png\) has a 128x64 semantic map"):
        load_coco(json_path, images, semantic_dir=broken)
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(broken / "000003.png")
    with pytest.raises(ValueError, match=r"image 3 \(000003.png\) .* mode 'RGB'"):
        load_coco(json_path, images, semantic_dir=broken)
    with pytest.raises(FileNotFoundError, match="semantic map folder"):
        load_coco(json_path, images, semantic_dir=tmp_path / "nowhere")


def test_resize_flip_pad_semantic_by_hand():
    semantic = np.zeros((50, 100), np.uint8)
    semantic[10:20, 0:30] = 7
    semantic[0, 98] = 255  # column 98 -> 79 (OpenCV nearest: floor(79 * 1.25))
    example = {"image": np.zeros((50, 100, 3), np.uint8),
               "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros((0,), np.int32),
               "masks": np.zeros((0, 50, 100), np.uint8), "image_id": np.int64(5),
               "semantic": semantic}
    # As test_resize_flip_pad_by_hand: 40x80, flipped, padded to 64x96.
    out = np.asarray(resize_and_pad(example, (80, 80), 32, tf.constant(True))["semantic"])
    assert out.shape == (64, 96) and out.dtype == np.uint8
    assert (out[8:16, 56:80] == 7).all() and (out == 7).sum() == 8 * 24
    assert out[0, 0] == 255  # the ignored corner pixel, flipped to the left
    assert (out[40:] == 255).all() and (out[:, 80:] == 255).all()  # padding is ignored
    assert (out[:40, :80] != 255).sum() == 40 * 80 - 1


@pytest.mark.parametrize("training", [False, True])
def test_semantic_maps_line_up_with_masks_in_batches(shapes_semantic, training):
    dataset = load_coco(*shapes_semantic[:2], semantic_dir=shapes_semantic[2])
    # 128 -> 100 (a scale that is not a whole ratio), padded to 128; training flips some.
    # Each mask crop, sampled back at its cell centres in the resized image, must land on
    # its category in the semantic map (boundary cells may round to the ignore ring).
    batches = build_dataset(dataset, batch_size=3, max_size=(100, 100), max_instances=8,
                            training=training, seed=1, mask_crop_size=16)
    for batch in batches.take(2):
        semantic, crops = np.asarray(batch["semantic"]), np.asarray(batch["mask_crops"])
        classes, boxes = np.asarray(batch["classes"]), np.asarray(batch["boxes"])
        assert semantic.shape == (3, 128, 128) and semantic.dtype == np.uint8
        assert (semantic[:, 100:] == 255).all() and (semantic[:, :, 100:] == 255).all()
        for i in range(3):
            for crop, category, box in zip(crops[i], classes[i], boxes[i], strict=True):
                if not category:
                    continue
                centres = (np.arange(16) + 0.5) / 16
                xs = np.floor(box[0] + centres * (box[2] - box[0])).astype(int)
                ys = np.floor(box[1] + centres * (box[3] - box[1])).astype(int)
                labels = semantic[i][np.ix_(ys, xs)][crop > 0]
                assert crop.sum() > 0 and np.mean(labels == category) > 0.9
                # OpenCV's floor-index nearest (the map) and the crop's continuous geometry
                # disagree by under a pixel: boundary cells may read background or ignore.
                assert set(np.unique(labels)) <= {category, 0, 255}


def test_batches_have_no_semantic_key_without_maps(shapes_val):
    batch = next(iter(build_dataset(load_coco(*shapes_val), batch_size=2, max_size=(128, 128),
                                    max_instances=8)))
    assert "semantic" not in batch and batch["images"].shape == (2, 128, 128, 3)


def _images_by_id(batches, count: int) -> list[tuple[int, np.ndarray]]:
    return [(int(i), image) for batch in batches.take(count)
            for i, image in zip(np.asarray(batch["image_ids"]), np.asarray(batch["images"]),
                                strict=True)]


def test_training_flips_follow_the_seed_and_the_switch(shapes_val):
    """Training flips are drawn per example from (seed, position): two builds with one seed
    flip the same images; `flip=False` (the config's `random_flip: false`) flips none, while
    still shuffling and repeating."""
    dataset = load_coco(*shapes_val)
    plain = dict(_images_by_id(build_dataset(dataset, batch_size=1, max_size=(128, 128),
                                             max_instances=8), 6))

    def training_images(flip=None):
        return _images_by_id(build_dataset(dataset, batch_size=2, max_size=(128, 128),
                                           max_instances=8, training=True, seed=3, flip=flip,
                                           group_by_aspect_ratio=False), 6)

    first, again = training_images(), training_images()
    assert [i for i, _ in first] == [i for i, _ in again]
    flipped = [not np.array_equal(image, plain[i]) for i, image in first]
    assert flipped == [not np.array_equal(image, plain[i]) for i, image in again]
    assert 0 < sum(flipped) < len(flipped)  # 12 fair draws: some flipped, some not
    for i, image in first:  # a flipped image is the plain one mirrored
        assert np.array_equal(image, plain[i]) or np.array_equal(image, plain[i][:, ::-1])
    unflipped = training_images(flip=False)
    assert len({i for i, _ in unflipped}) == 6  # repeats: 12 images from 6
    assert all(np.array_equal(image, plain[i]) for i, image in unflipped)

"""Saliency data: generated scenes, the DUTS/ECSSD folder reader's refusals and notes, and
the seeded input pipeline."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from keras_res2net.saliency import data as data_lib
from keras_res2net.saliency.folder import BadPairsError, read_folder
from keras_res2net.saliency.scenes import make_scene, make_scenes


def test_scenes_are_keyed_by_seed_and_index():
    image, mask = make_scene(3, 5, 64)
    again, again_mask = make_scenes(3, 2, 64, start=4)
    np.testing.assert_array_equal(again[1], image)
    np.testing.assert_array_equal(again_mask[1], mask)
    other, _ = make_scene(4, 5, 64)
    assert np.abs(other.astype(int) - image).mean() > 10  # another seed, another scene
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255} and 0.03 < (mask > 0).mean() < 0.8


def test_scene_objects_have_soft_edges():
    """At an object's right edge the image blends over a few pixels: the last salient pixel
    differs from the one two pixels inside it about twice as much as that one differs from
    the next two inside (a hard edge: about as much, stripes and noise only)."""
    edge_steps, inner_steps = [], []
    for index in range(4):
        image, mask = make_scene(0, index, 96)
        pixels, salient = image.astype(float), mask > 0
        edge = salient[:, 5:-1] & ~salient[:, 6:]  # salient, its right neighbour not
        for k in range(1, 6):  # and the five pixels to its left salient
            edge &= salient[:, 5 - k:-1 - k]
        ys, xs = np.nonzero(edge)
        xs = xs + 5
        edge_steps += list(np.abs(pixels[ys, xs] - pixels[ys, xs - 2]).sum(-1))
        inner_steps += list(np.abs(pixels[ys, xs - 2] - pixels[ys, xs - 4]).sum(-1))
    assert np.mean(edge_steps) > 1.4 * np.mean(inner_steps)


def _write_pair(root, stem, size=(24, 16), mask_size=None, mask_value=255, suffix=".jpg"):
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    width, height = size
    Image.new("RGB", size, (200, 50, 50)).save(root / "images" / f"{stem}{suffix}")
    mask = np.zeros((mask_size or size)[::-1], np.uint8)
    mask[: height // 2] = mask_value
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def test_folder_names_every_bad_pair_before_anything(tmp_path):
    root = tmp_path / "duts"
    _write_pair(root, "good")
    _write_pair(root, "sizes", mask_size=(20, 16))
    _write_pair(root, "lonely_image")
    os.remove(root / "masks" / "lonely_image.png")
    _write_pair(root, "lonely_mask")
    os.remove(root / "images" / "lonely_mask.jpg")
    _write_pair(root, "corrupt")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(BadPairsError) as caught:
        read_folder(str(root))
    message = str(caught.value)
    assert "4 of its 5 image/mask pairs cannot be used" in message
    assert "--skip_bad_images" in message
    assert "lonely_image.jpg: has no mask lonely_image.png" in message
    assert "lonely_mask.png: is a mask without an image" in message
    assert "sizes.png: is 20x16 pixels, but its image" in message and "is 24x16" in message
    assert "corrupt.jpg: does not decode" in message
    notes = []
    kept = read_folder(str(root), skip_bad=True, log=notes.append)
    assert [os.path.basename(p.image) for p in kept.pairs] == ["good.jpg"]
    assert kept.left_out == 4 and "left out 4 of 5" in notes[0]
    # train/saliency.py: exit status 2, and nothing written (the run folder not even made).
    from keras_res2net.cli_errors import exit_code
    from keras_res2net.saliency import config, task

    run_dir = tmp_path / "run"
    with pytest.raises(BadPairsError) as caught:
        task.run(config.resolve(config.SaliencyConfig(data=str(root), model_dir=str(run_dir))))
    assert exit_code(caught.value) == 2 and not run_dir.exists()


def test_folder_without_images_and_non_binary_masks(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot tell its image folder"):
        read_folder(str(tmp_path))
    root = tmp_path / "ecssd"
    _write_pair(root, "a", mask_value=200, suffix=".png")  # antialiased: not 0/255
    _write_pair(root, "b", mask_value=100, suffix=".png")
    notes = []
    checked = read_folder(str(root), log=notes.append)
    assert checked.non_binary == 2 and "2 of 2 masks are not binary" in notes[0]
    masks = list(data_lib.eval_masks(data_lib.folder_set(checked)))
    assert masks[0].max() == 1.0 and masks[1].max() == 0.0  # binarised at 0.5: 200 yes, 100 no


def test_pipeline_is_seeded_and_resumes_where_it_left_off():
    scenes = data_lib.synthetic_set(0, 8, 64)

    def batches(skip=0, seed=1, count=2):
        ds = data_lib.train_dataset(scenes, image_size=32, batch_size=2, seed=seed, epoch=0,
                                    skip_batches=skip)
        return [tuple(t.numpy() for t in batch) for batch in ds.take(count)]

    first = batches()
    resumed = batches(skip=1, count=1)  # a second run, resumed after one batch
    for a, b in zip(first[1], resumed[0], strict=True):
        np.testing.assert_array_equal(a, b)
    images, masks = first[0]
    assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32, 1)
    assert 0 <= masks.min() and masks.max() <= 1 and masks.mean() > 0.01
    other = batches(seed=2, count=1)[0][0]
    assert np.abs(other - images).mean() > 0.05

"""Bad COCO input (issues #12 and #13, cases 2 and 8): malformed JSON named with its line or
record before pycocotools sees it, an empty annotation set refused, corrupt or mis-sized
images named with their annotation file up front, or skipped and counted."""

import json
import os
import subprocess
import sys

import pytest
from loopback import ROOT, script_env
from mock_coco import write_coco_set

from keras_res2net.detection import configs
from keras_res2net.detection.data import sources
from keras_res2net.detection.data.coco import CocoFormatError, load_coco
from keras_res2net.detection.data.image_check import BadImagesError, check_images


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    return write_coco_set(tmp_path_factory.mktemp("coco"), sizes=((40, 56), (56, 40)))


def _rewritten(coco_set, tmp_path, change) -> str:
    data = json.loads(coco_set[0].read_text())
    change(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("categories"), r"instances.json: no 'categories' list"),
    (lambda d: d.update(annotations=[]), r"instances.json: 'annotations' is empty"),
    (lambda d: d["annotations"][2].update(bbox=[1, "a", 3, 4]),
     r"instances.json: annotation 3 has bbox \[1, 'a', 3, 4\], not \[x, y, width, height\]"),
    (lambda d: d["annotations"][1].pop("image_id"), r"annotation 2 has no 'image_id'"),
    (lambda d: d["images"][0].update(height="40"), r"image 1 has height '40', not a positive"),
])
def test_malformed_json_names_the_file_and_record(coco_set, tmp_path, change, message):
    path = _rewritten(coco_set, tmp_path, change)
    with pytest.raises(CocoFormatError, match=message):
        load_coco(path, coco_set[1])


def test_invalid_json_names_line_and_column(coco_set, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n  "annotations": [\n    {"id": 1,, }\n]}')
    with pytest.raises(CocoFormatError, match=r"broken.json: invalid JSON at line 3, column 14"):
        load_coco(path, coco_set[1])


def _with_bad_image(coco_set, tmp_path, damage):
    """A copy of the set whose first image is damaged by `damage(path)`."""
    json_path, folder, _ = coco_set
    copy = tmp_path / "images"
    copy.mkdir(parents=True)
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damage(copy / "0001.jpg")
    (tmp_path / "instances.json").write_bytes(json_path.read_bytes())
    return load_coco(tmp_path / "instances.json", copy)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])


def test_corrupt_image_stops_with_file_and_annotation_set(coco_set, tmp_path):
    dataset = _with_bad_image(coco_set, tmp_path, _truncate)
    with pytest.raises(BadImagesError) as error:
        check_images(dataset)
    first, listing = str(error.value).split("\n", 1)
    assert first.startswith(f"{tmp_path / 'instances.json'}: 1 of its 2 images cannot be used")
    assert "--skip_bad_images" in first
    assert listing.strip().startswith(f"{tmp_path / 'images' / '0001.jpg'}: does not decode")


def test_skip_bad_images_leaves_them_out_and_counts(coco_set, tmp_path, capsys):
    dataset = _with_bad_image(coco_set, tmp_path, _truncate)
    kept = check_images(dataset, skip_bad=True)
    assert [record.path.name for record in kept.records] == ["0002.jpg"]
    assert "left out 1 of the 2 images" in capsys.readouterr().out
    # The trainer's source does the same, through --skip_bad_images.
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    config.data.train_json, config.data.train_images = "instances.json", "images"
    with pytest.raises(BadImagesError, match="1 of its 2 images"):
        sources.open_source("coco_json", config, tmp_path)
    source = sources.open_source("coco_json", config, tmp_path, skip_bad_images=True)
    assert source.num_examples == 1


def test_image_of_another_size_than_annotated_is_named(coco_set, tmp_path):
    from PIL import Image

    def resize(path):
        with Image.open(path) as image:
            image.resize((30, 20)).save(path)

    with pytest.raises(BadImagesError, match=r"0001.jpg: is 30x20 pixels, but the annotation "
                                             r"file says 56x40"):
        check_images(_with_bad_image(coco_set, tmp_path, resize))


def _coco_py(*args: str) -> subprocess.CompletedProcess:
    env = script_env(PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                              os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, os.path.join(ROOT, "train", "coco.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_coco_py_stops_before_training_on_a_corrupt_image(coco_set, tmp_path):
    """The script: exit status 2, the annotation file and the bad image named, no traceback,
    no checkpoint (malformed JSON takes the same path: `test_format_errors_are_usage_errors`)."""
    _with_bad_image(coco_set, tmp_path, _truncate)
    # The synthetic experiment reads train.json and train/ under --data_dir.
    (tmp_path / "train.json").write_bytes((tmp_path / "instances.json").read_bytes())
    (tmp_path / "train").symlink_to(tmp_path / "images")
    done = _coco_py("--experiment", "mask_rcnn_res2net50_fpn_synthetic", "--model_dir",
                    str(tmp_path / "run"), "--data_dir", str(tmp_path), "--steps", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (f"train/coco.py: error: {tmp_path / 'train.json'}: 1 of its 2 images cannot be "
            "used") in done.stderr
    assert f"{tmp_path / 'train' / '0001.jpg'}: does not decode" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_format_errors_are_usage_errors(coco_set, tmp_path, capsys):
    """train/coco.py reports every error through `cli_errors.report`: one line, exit 2."""
    from keras_res2net.cli_errors import report

    path = _rewritten(coco_set, tmp_path, lambda d: d.pop("categories"))
    for error_type in (CocoFormatError, BadImagesError):
        with pytest.raises(error_type) as error:
            if error_type is CocoFormatError:
                load_coco(path, coco_set[1])
            else:
                check_images(_with_bad_image(coco_set, tmp_path / "b", _truncate))
        assert report(error.value, "train/coco.py") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (f"train/coco.py: error: {path}: no 'categories' list; a COCO instances "
                        "file has 'images', 'annotations' and 'categories'.")
    assert "Traceback" not in "".join(lines)

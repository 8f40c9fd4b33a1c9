"""Learning, end to end: small Res2Net-FPN detectors trained on generated shapes.

Shortened runs of the `mask_rcnn_res2net50_fpn_synthetic` and `htc_res2net50_fpn_synthetic`
experiments (96x96 images, batch 4, a few minutes each on 2 CPU cores); the bounds sit well
below what they reach so the tests are stable, and well above what an untrained or broken
detector scores (~0). HTC runs with its semantic branch on generated label maps, so the
semantic data path, the cascade and the interleaved mask branch all train together. The
full experiments (300 steps at 128x128) are the benchmark: benchmarks/detection_table.py.
"""

import re
import time

import numpy as np
import pytest
from PIL import Image

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data.synthetic import write_dataset

pytestmark = pytest.mark.slow

STEPS = 150
HTC_STEPS = 150


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One generated set for both trainings: the semantic maps leave images and JSON as they
    are without them (test_data.py), so Mask R-CNN trains on the same data it always did."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), train=200, val=40, seed=3, size=96,
                         semantic=True)


def test_small_mask_rcnn_learns_shapes(tmp_path, data_dir):
    config = configs.get_experiment("mask_rcnn_res2net50_fpn_synthetic")
    config.data.max_size = (96, 96)
    config.train.steps = STEPS
    config.train.warmup_steps = 30
    config.train.decay_steps = (120, 140)
    start = time.time()
    task, model, seconds_per_step = trainer.train(config, data_dir, tmp_path / "run")
    metrics = trainer.evaluate(task, model, data_dir)
    print(f"box AP50 {metrics['bbox']['AP50']:.3f}, mask AP50 {metrics['segm']['AP50']:.3f}, "
          f"{seconds_per_step:.2f} s/step, {time.time() - start:.0f} s in all")
    assert (tmp_path / "run" / trainer.WEIGHTS).exists()
    # Measured 0.47-0.53 box and mask AP50 at this length; untrained detectors score ~0.
    assert metrics["bbox"]["AP50"] >= 0.35
    assert metrics["segm"]["AP50"] >= 0.3


def semantic_balanced_accuracy(model, data_dir, count: int = 20) -> tuple[float, int]:
    """Mean per-class recall of the semantic head's per-pixel argmax on `count` val images,
    against the label maps sampled as the loss samples them (every 8th pixel, 255 ignored).

    Returns it and the number of classes present: a head that predicts one class everywhere
    (background, the majority) scores 1/classes, so beating that needs the shapes found."""
    hits, totals = {}, {}
    for path in sorted((data_dir / "val").glob("*.png"))[:count]:
        image = np.asarray(Image.open(path), np.float32)[None]
        labels = np.asarray(Image.open(data_dir / "val_semantic" / path.name))
        logits, _ = model.semantic(model.extract(image, training=False), training=False)
        logits = np.asarray(logits)[0]
        stride = labels.shape[0] // logits.shape[0]
        labels = labels[::stride, ::stride]
        predicted = logits.argmax(-1)
        for label in np.unique(labels[labels != 255]):
            where = labels == label
            hits[label] = hits.get(label, 0) + int(np.sum(predicted[where] == label))
            totals[label] = totals.get(label, 0) + int(np.sum(where))
    return float(np.mean([hits[k] / totals[k] for k in totals])), len(totals)


def test_small_htc_with_semantic_branch_learns_shapes(tmp_path, data_dir, capsys):
    config = configs.get_experiment("htc_res2net50_fpn_synthetic")
    config.data.max_size = (96, 96)
    config.train.steps = HTC_STEPS
    config.train.warmup_steps = 30
    config.train.decay_steps = (120, 140)
    task, model, seconds_per_step = trainer.train(config, data_dir, tmp_path / "run")
    metrics = trainer.evaluate(task, model, data_dir)
    # The semantic branch learned, not only the boxes and masks (which would pass without
    # it, or with its loss weighted 0): its per-epoch mean loss fell, and its per-pixel
    # classes beat predicting the majority (background) everywhere.
    log = capsys.readouterr().out
    semantic = [float(v) for v in re.findall(r"^epoch \d+/\d+ .*?semantic ([0-9.]+)", log,
                                             re.MULTILINE)]
    balanced, classes = semantic_balanced_accuracy(model, data_dir)
    with capsys.disabled():
        print(f"HTC box AP50 {metrics['bbox']['AP50']:.3f}, mask AP50 "
              f"{metrics['segm']['AP50']:.3f}, {seconds_per_step:.2f} s/step, semantic loss "
              f"per epoch {semantic}, semantic balanced pixel accuracy {balanced:.3f}")
    assert metrics["bbox"]["AP50"] >= 0.35
    assert metrics["segm"]["AP50"] >= 0.3
    # Measured: semantic loss 0.77, 0.10, 0.07 per epoch; balanced accuracy 0.45 over 4
    # classes (majority and untrained: 0.25). With the semantic loss weighted 0 (AP50 still
    # 0.75): 0, 0, 0 and 0.24.
    assert len(semantic) >= 2 and semantic[-1] < 0.5 * semantic[0], log
    assert balanced >= 1 / classes + 0.1, (balanced, classes)

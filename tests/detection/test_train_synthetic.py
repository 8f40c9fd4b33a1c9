"""Learning, end to end: small Res2Net-FPN detectors trained on generated shapes.

Shortened runs of the `mask_rcnn_res2net50_fpn_synthetic` and `htc_res2net50_fpn_synthetic`
experiments (96x96 images, batch 4, a few minutes each on 2 CPU cores); the bounds sit well
below what they reach so the tests are stable, and well above what an untrained or broken
detector scores (~0). HTC runs with its semantic branch on generated label maps, so the
semantic data path, the cascade and the interleaved mask branch all train together. The
full experiments (300 steps at 128x128) are the benchmark: benchmarks/detection_table.py.
"""

import time

import pytest

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data.synthetic import write_dataset

pytestmark = pytest.mark.slow

STEPS = 150
HTC_STEPS = 150


def test_small_mask_rcnn_learns_shapes(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=200, val=40, seed=3, size=96)
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


def test_small_htc_with_semantic_branch_learns_shapes(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=200, val=40, seed=3, size=96,
                             semantic=True)
    config = configs.get_experiment("htc_res2net50_fpn_synthetic")
    config.data.max_size = (96, 96)
    config.train.steps = HTC_STEPS
    config.train.warmup_steps = 30
    config.train.decay_steps = (120, 140)
    task, model, seconds_per_step = trainer.train(config, data_dir, tmp_path / "run")
    metrics = trainer.evaluate(task, model, data_dir)
    print(f"HTC box AP50 {metrics['bbox']['AP50']:.3f}, mask AP50 "
          f"{metrics['segm']['AP50']:.3f}, {seconds_per_step:.2f} s/step")
    assert metrics["bbox"]["AP50"] >= 0.35
    assert metrics["segm"]["AP50"] >= 0.3

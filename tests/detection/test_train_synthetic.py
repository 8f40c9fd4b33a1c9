"""Learning, end to end: a small Res2Net-FPN Mask R-CNN trained on generated shapes.

A shortened run of the `mask_rcnn_res2net50_fpn_synthetic` experiment (96x96 images, 150
steps of batch 4, a few minutes on 2 CPU cores); the bounds sit well below what it reaches
so the test is stable, and well above what an untrained or broken detector scores (~0).
The full experiment (300 steps at 128x128) is the benchmark: see the README.
"""

import time

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data.synthetic import write_dataset

STEPS = 150


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

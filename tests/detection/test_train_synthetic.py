"""Learning, end to end: small Res2Net-FPN detectors trained on generated shapes.

A shortened run of the `mask_rcnn_res2net50_fpn_synthetic` experiment (96x96 images,
batch 4, a few minutes on 2 CPU cores); the bounds sit well below what it reaches so the test
is stable, and well above what an untrained or broken detector scores (~0). HTC, the cascade
and the semantic branch learn in test_train_synthetic_htc.py (a file of its own, so the two
trainings run on different workers). The full experiments (300 steps at 128x128) are the
benchmark: benchmarks/detection_table.py.
"""

import time

import pytest

from keras_res2net.detection import trainer

pytestmark = pytest.mark.slow

STEPS = 150
# Set from the spread over seeds under CI's thread share (tools/learning_spread.py, recorded
# in benchmarks/results/learning_spread.json); untrained detectors score ~0.
BOX_AP50, MASK_AP50 = 0.35, 0.3


def test_small_mask_rcnn_learns_shapes(tmp_path, learning_shapes, learning_config,
                                       report_figure):
    data_dir = learning_shapes
    config = learning_config("mask_rcnn_res2net50_fpn_synthetic", STEPS, warmup=30,
                             decay=(120, 140))
    start = time.time()
    task, model, seconds_per_step = trainer.train(config, data_dir, tmp_path / "run")
    metrics = trainer.evaluate(task, model, data_dir)
    print(f"box AP50 {metrics['bbox']['AP50']:.3f}, mask AP50 {metrics['segm']['AP50']:.3f}, "
          f"{seconds_per_step:.2f} s/step, {time.time() - start:.0f} s in all")
    assert (tmp_path / "run" / trainer.WEIGHTS).exists()
    assert report_figure("box_AP50", metrics["bbox"]["AP50"], BOX_AP50) >= BOX_AP50
    assert report_figure("mask_AP50", metrics["segm"]["AP50"], MASK_AP50) >= MASK_AP50

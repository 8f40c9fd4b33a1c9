"""Shared fixtures for the detection tests: a small generated shapes dataset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shapes_val(tmp_path_factory):
    """Six generated 128x128 images with exact boxes and masks (seed 7)."""
    from keras_res2net.detection.data.synthetic import write_split

    root = tmp_path_factory.mktemp("shapes")
    json_path = write_split(root, "val", 6, seed=7)
    return json_path, root / "val"


@pytest.fixture(scope="session")
def shapes_semantic(tmp_path_factory):
    """The same six images written with semantic maps: (json, image dir, semantic dir)."""
    from keras_res2net.detection.data.synthetic import write_split

    root = tmp_path_factory.mktemp("shapes_semantic")
    json_path = write_split(root, "val", 6, seed=7, semantic=True)
    return json_path, root / "val", root / "val_semantic"


@pytest.fixture(scope="session")
def learning_shapes(tmp_path_factory):
    """The learning tests' generated set (200 train, 40 val, 96x96, seed 3) with semantic
    maps: the maps leave images and JSON as they are without them (test_data.py), so Mask
    R-CNN trains on the same data as HTC."""
    from keras_res2net.detection.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("learning_shapes"), train=200, val=40, seed=3,
                         size=96, semantic=True)


@pytest.fixture
def learning_config(learning_seed):
    """make(experiment, steps, warmup, decay, heads=None): `experiment` as the learning tests
    run it, images resized to fit 96x96, `steps` steps, `warmup` warmup steps, the learning
    rate dropped at the `decay` steps, seeded with `learning_seed`; `heads` (a HeadConfig)
    replaces the experiment's head sizes."""
    from keras_res2net.detection import configs

    def make(experiment: str, steps: int, warmup: int, decay: tuple, heads=None):
        config = configs.get_experiment(experiment)
        config.data.max_size = (96, 96)
        if heads is not None:
            config.model.heads = heads
        train = config.train
        train.steps, train.warmup_steps, train.decay_steps = steps, warmup, decay
        train.seed = learning_seed
        return config

    return make


SMALL_RUN_EXPERIMENT = "mask_rcnn_res2net50_fpn_synthetic"
SMALL_RUN_MAX_SIZE = 96  # not the experiment's 128: readers must take it from the folder


def small_run_config():
    """The synthetic Mask R-CNN with narrow heads (quick on CPU) and images resized to fit
    96x96: both differ from the registry, so a reader that rebuilt the registered experiment
    instead of the folder's `experiment.json` fails to load the weights or resizes wrongly."""
    from keras_res2net.detection import configs

    config = configs.get_experiment(SMALL_RUN_EXPERIMENT)
    config.model.heads = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8,
                                            mask_convs=1)
    config.model.rpn.post_nms_topk = 30
    config.data.max_size = (SMALL_RUN_MAX_SIZE, SMALL_RUN_MAX_SIZE)
    return config


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A run folder as train/coco.py leaves it, without the training: fresh weights of
    `small_run_config()` in `detector.weights.h5` beside its `experiment.json`."""
    from keras_res2net.detection.experiment_io import save_experiment
    from keras_res2net.detection.task import DetectionTask
    from keras_res2net.detection.trainer import WEIGHTS

    folder = tmp_path_factory.mktemp("small_run")
    config = small_run_config()
    model = DetectionTask(config).build_model()
    model.save_weights(folder / WEIGHTS)
    save_experiment(config, folder, SMALL_RUN_EXPERIMENT)
    return folder

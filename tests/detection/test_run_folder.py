"""Run folders carry `experiment.json`: training writes it and refuses a folder of another
experiment; evaluation (train/coco.py --mode eval --checkpoint), `load_trained` and
res2net-export rebuild the folder's config, overrides included.

`small_run` (conftest.py) is a folder whose config differs from the registered experiment
in its heads (the registry's model cannot take the weights) and its image size (96, not 128).
"""

import json
import os
import subprocess
import sys

import pytest
from loopback import ROOT, SIGNAL_AFTER_CHECKPOINT, SIGNAL_ENV, op_determinism_restored, script_env

from keras_res2net.detection import configs, experiment_io, trainer
from keras_res2net.detection.data.synthetic import write_dataset, write_split

EXPERIMENT = "mask_rcnn_res2net50_fpn_synthetic"


def test_resume_may_change_the_schedule_but_not_the_model_or_data(tmp_path):
    config = configs.get_experiment(EXPERIMENT)
    experiment_io.save_experiment(config, tmp_path, EXPERIMENT)
    longer = configs.get_experiment(EXPERIMENT)
    longer.train.steps, longer.train.decay_steps = 900, (700, 800)
    longer.data.batch_size = 8
    experiment_io.check_resumable(tmp_path, longer)  # the schedule and batch size may change
    resized = configs.get_experiment(EXPERIMENT)
    resized.data.max_size = (64, 64)
    with pytest.raises(experiment_io.ExperimentMismatchError,
                       match=r"belongs to another experiment \(mask_rcnn_res2net50_fpn_"
                             r"synthetic\).*data.max_size: \[128,128\] in the folder, "
                             r"\[64,64\] here"):
        experiment_io.check_resumable(tmp_path, resized)
    other = configs.get_experiment("htc_res2net50_fpn_synthetic")
    with pytest.raises(experiment_io.ExperimentMismatchError) as refused:
        experiment_io.check_resumable(tmp_path, other)
    message = str(refused.value)
    assert "\n" not in message and "and 3 more" in message  # roi beta, semantic maps, border
    assert "model.cascade: null in the folder" in message.split(";")[0]  # what says most
    experiment_io.check_resumable(tmp_path / "fresh", other)  # no experiment.json: any
    # Reading a folder: a named experiment of another model is refused, not silently replaced.
    with pytest.raises(experiment_io.ExperimentMismatchError, match="model.include_mask"):
        experiment_io.resolve_experiment(tmp_path, "faster_rcnn_res2net50_fpn_synthetic")
    assert experiment_io.resolve_experiment(tmp_path, EXPERIMENT) == config


@pytest.mark.slow
def test_trainer_writes_experiment_json_and_refuses_another_experiment(tmp_path):
    data_dir = write_dataset(tmp_path / "shapes", train=2, val=1, seed=4, size=64)
    config = configs.get_experiment(EXPERIMENT)
    config.model.heads = configs.HeadConfig(fpn_channels=16, fc_dim=32, mask_channels=8,
                                            mask_convs=1)
    config.data.max_size, config.data.batch_size = (64, 64), 1
    config.train.steps, config.train.decay_steps, config.train.warmup_steps = 1, (), 0
    model_dir = tmp_path / "run"
    task, model, _ = trainer.train(config, data_dir, model_dir, name=EXPERIMENT,
                                   eval_data_dir=data_dir)
    assert experiment_io.load_experiment(model_dir) == config  # overrides included
    # The one trainer's curves: every loss term and the COCO AP of the epoch-end evaluation
    # (the metric of the trained weights, as a separate evaluation computes it).
    (record,) = json.loads((model_dir / "history.json").read_text())
    assert {"rpn_cls_loss", "mask_loss", "total_loss", "lr"} <= set(record)
    metrics = trainer.evaluate(task, model, data_dir, verbose=False)
    assert record["val_bbox_AP"] == metrics["bbox"]["AP"]
    assert record["val_segm_AP50"] == metrics["segm"]["AP50"]
    assert (model_dir / "history.png").stat().st_size > 1000
    import tensorflow as tf

    tags = {value.tag for path in (model_dir / "tensorboard").iterdir()
            for event in tf.compat.v1.train.summary_iterator(str(path))
            for value in event.summary.value}
    assert {"train/rpn_cls_loss", "train/total_loss", "validation/bbox_AP"} <= tags, tags
    assert experiment_io.saved_name(model_dir) == EXPERIMENT
    task, _ = trainer.load_trained(None, model_dir)
    assert task.config.data.max_size == (64, 64)

    source = trainer.coco_json_source(config, data_dir)
    other = configs.get_experiment("faster_rcnn_res2net50_fpn_synthetic")
    with pytest.raises(experiment_io.ExperimentMismatchError,
                       match=f"{model_dir} belongs to another experiment .*"
                             "model.include_mask: true in the folder, false here"):
        trainer.DetectionTrainer(other, source, model_dir)
    assert experiment_io.load_experiment(model_dir) == config  # left as it was
    # train/coco.py resolves the same way before any work, also without --experiment.
    with pytest.raises(experiment_io.ExperimentMismatchError):
        trainer.resolve_run("train", experiment="faster_rcnn_res2net50_fpn_synthetic",
                            model_dir=model_dir)
    resumed, name, _ = trainer.resolve_run("train", model_dir=model_dir, steps=3)
    assert (name, resumed.train.steps, resumed.data.max_size) == (EXPERIMENT, 3, (64, 64))


def test_load_trained_rebuilds_the_folder_config(small_run):
    task, model = trainer.load_trained(None, small_run)
    assert task.config.data.max_size == (96, 96)
    assert task.config.model.heads.fpn_channels == 16
    with pytest.raises(experiment_io.ExperimentMismatchError, match="model.heads"):
        trainer.load_trained(configs.get_experiment(EXPERIMENT), small_run)


def test_resolve_run_errors_name_what_to_pass(tmp_path, small_run):
    for kwargs, needle in (
            ({}, "--mode eval needs --checkpoint"),
            ({"checkpoint": tmp_path / "none"}, "no such run folder"),
            ({"checkpoint": tmp_path}, "no detector.weights.h5"),
            ({"checkpoint": small_run, "model_dir": small_run}, "not both")):
        with pytest.raises((ValueError, FileNotFoundError), match=needle):
            trainer.resolve_run("eval", **kwargs)
    with pytest.raises(ValueError, match="has no experiment.json: pass --experiment"):
        trainer.resolve_run("train", model_dir=tmp_path / "new")
    with pytest.raises(ValueError, match="--checkpoint is for --mode eval"):
        trainer.resolve_run("train", experiment=EXPERIMENT, model_dir=tmp_path,
                            checkpoint=small_run)
    config, name, _ = trainer.resolve_run("eval", checkpoint=small_run, max_size=64)
    assert (name, config.data.max_size, config.model.heads.fc_dim) == (EXPERIMENT, (64, 64), 32)


def _coco_py(*args: str) -> subprocess.CompletedProcess:
    env = script_env(PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                              os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, os.path.join(ROOT, "train", "coco.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_coco_eval_of_a_checkpoint_folder(tmp_path, small_run):
    """`train/coco.py --mode eval --checkpoint DIR` through absl, without --experiment: the
    folder's model (the registry's would not load the weights) at the folder's 96x96."""
    write_split(tmp_path, "val", 2, seed=9, size=64)
    done = _coco_py("--mode", "eval", "--checkpoint", str(small_run), "--data_dir",
                    str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"evaluating {small_run}: {EXPERIMENT}, images resized to fit 96x96" in done.stdout
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"bbox", "segm"} and len(metrics["bbox"]) == 12
    refused = _coco_py("--mode", "eval", "--checkpoint", str(tmp_path / "missing"),
                       "--data_dir", str(tmp_path))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"train/coco.py: error: {tmp_path / 'missing'}: no such run folder or weights file.")
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_export_reads_the_folder_experiment(tmp_path, small_run, capsys):
    from keras_res2net.export import cli

    code = cli.main(["--task", "detection", "--checkpoint", str(small_run), "--format",
                     "savedmodel", "--output", str(tmp_path / "out"), "--latency-runs", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    # The check images take the folder's max_size (the registry's would be 128x128).
    assert f"{EXPERIMENT}: input uint8 RGB images" in out
    assert "checked on 3 generated 96x96 shapes images" in out
    assert (tmp_path / "out" / f"{EXPERIMENT}_savedmodel" / "saved_model.pb").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "detector.weights.h5").write_bytes((small_run / "detector.weights.h5").read_bytes())
    code = cli.main(["--task", "detection", "--checkpoint", str(bare), "--format",
                     "savedmodel", "--output", str(tmp_path / "out2")])
    assert code == 2 and "pass --experiment NAME" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_backbone_weights_are_loaded_before_training(tmp_path):
    """`--backbone_weights` (DetectionTrainer(backbone_weights=...)): the detector's backbone
    holds the file's weights once built; without it, the (seeded) random initialisation."""
    import keras
    import numpy as np

    from keras_res2net.detection.data.sources import coco_json_source
    from keras_res2net.models import create_model

    config = configs.get_experiment(EXPERIMENT)
    backbone = config.model.backbone
    keras.utils.set_random_seed(123)  # not the trainer's seed: other values than its init
    pretrained = create_model(backbone.name, include_top=False, layers=backbone.layers,
                              base_width=backbone.base_width, scale=backbone.scale,
                              stage_pool=backbone.stage_pool)
    path = tmp_path / "backbone.weights.h5"
    pretrained.save_weights(path)
    expected = pretrained.get_weights()
    write_split(tmp_path / "data", "train", 2, seed=1, size=64)
    source = coco_json_source(config, tmp_path / "data")

    def backbone_weights(**kwargs):
        built = trainer.DetectionTrainer(config, source, tmp_path / f"run{len(kwargs)}",
                                         **kwargs)
        return built.model.backbone.get_weights()

    loaded = backbone_weights(backbone_weights=str(path))
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    fresh = backbone_weights()
    assert not all(np.array_equal(got, want) for got, want in zip(fresh, expected, strict=True))


@pytest.mark.slow
def test_detection_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL right after the checkpoint of step 3 (mid-epoch: 2 steps per epoch), then the
    same command resumes from it and, under --deterministic, ends on the weights of an
    uninterrupted run (trained here, in this process: two processes, the same sha256).
    Faster R-CNN: the resume is the trainer's and the detection task's, the same for every
    architecture, and its smaller graph traces sooner (each of the three runs traces it).
    Broken on purpose: without the RoI-sampling seed state in the checkpoint
    (`DetectionTrainingTask.checkpoint_items` returning {}) the digests differ."""
    import signal

    import tensorflow as tf

    from keras_res2net.training.trainer import weights_digest

    data_dir = tmp_path / "data"
    write_dataset(data_dir, train=4, val=1, seed=2, size=64)
    model_dir = tmp_path / "run"
    steps, kill_at = 4, 3
    experiment = "faster_rcnn_res2net50_fpn_synthetic"
    args = [os.path.join(ROOT, "train", "coco.py"), "--experiment", experiment,
            "--data_dir", str(data_dir), "--model_dir", str(model_dir), "--steps",
            str(steps), "--batch_size", "2", "--max_size", "64", "--checkpoint_every", "1",
            "--deterministic"]
    env = script_env(PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                              os.environ.get("PYTHONPATH")])))
    killed = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_CHECKPOINT, *args], cwd=ROOT,
                            env={**env, SIGNAL_ENV: f"{kill_at}:SIGKILL"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (model_dir / trainer.WEIGHTS).exists()
    latest = tf.train.latest_checkpoint(str(model_dir / trainer.CHECKPOINTS))
    assert latest.endswith(f"ckpt-{kill_at}"), latest
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resumed from {latest} at step {kill_at}/{steps} " in done.stdout, done.stdout
    final = next(line for line in done.stdout.splitlines() if line.startswith("Final:"))
    assert f"trained {steps - kill_at} steps" in final and f"step {steps}/{steps}" in final
    assert (model_dir / trainer.WEIGHTS).exists()
    config = trainer.apply_overrides(configs.get_experiment(experiment), steps=steps,
                                     batch_size=2, max_size=64)
    with op_determinism_restored():
        _, model, _ = trainer.train(config, data_dir, tmp_path / "uninterrupted",
                                    checkpoint_every=1, deterministic=True)
    assert f"weights sha256 {weights_digest(model)} " in final

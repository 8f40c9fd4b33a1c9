"""Train or evaluate a two-stage detector on COCO-format data.

    python train/coco.py --experiment mask_rcnn_res2net50_fpn_synthetic \
        --data_dir data/shapes --model_dir runs/shapes
    python train/coco.py --mode eval --checkpoint runs/shapes --data_dir data/shapes
    python train/coco.py --mode eval --checkpoint converted/htc --data_dir coco
    TF_CONFIG=... python train/coco.py --experiment ... --strategy multi_worker ...

Flags only; the work is in `keras_res2net.detection` (configs, task, trainer). Training runs
in the one trainer of every task (`keras_res2net.training.trainer`) under any tf.distribute
strategy (`--strategy`); `--mode train_and_eval` evaluates COCO AP at each epoch end. Every run
folder carries `experiment.json` (the resolved config, overrides included): `--mode eval
--checkpoint DIR` rebuilds the model from it (a training run or the output of
`keras_res2net.detection.convert`), so `--experiment` is only needed for a new run or a folder
without the file. Bad flags, a missing run folder or weights, a folder of another experiment,
or bad data (invalid or incomplete COCO JSON, an empty annotation set, images that do not
decode) stop with one line (or a list of the bad images) and exit 2, before training; failed
work exits 1; `--verbose` adds the traceback. Every image is decoded once up front
(`--check_images`); a corrupt one stops the run, or with `--skip_bad_images` is left out and
counted.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

from absl import app, flags

from keras_res2net.cli_errors import report
from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data import sources
from keras_res2net.training.determinism import strategy_error
from keras_res2net.training.strategies import make_strategy
from keras_res2net.training.trainer import PreemptedError

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", None,
                    "Registered experiment (needed for a new run, or to evaluate a folder "
                    "without experiment.json): " + ", ".join(configs.list_experiments()))
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")
flags.DEFINE_string("data_dir", None, "Folder holding the COCO JSON files and image folders "
                    "(or the TFDS data_dir, or the TFRecords) "
                    "named in the experiment's data config.", required=True)
flags.DEFINE_string("model_dir", None, "Training: where checkpoints, experiment.json and "
                    "detector.weights.h5 are written (and a run resumes from).")
flags.DEFINE_string("checkpoint", None, "--mode eval: the run folder (a --model_dir, or "
                    "converted mmdetection weights) holding detector.weights.h5 and "
                    "experiment.json, or a .weights.h5 file.")
flags.DEFINE_enum("data", "coco_json", list(sources.SOURCES),
                  "Training data: COCO JSON + images under --data_dir, TFDS coco/2017 prepared "
                  "in --data_dir (boxes only: faster_rcnn_* experiments), or Model Garden "
                  "TFRecords (--tfrecord_pattern). Evaluation reads the COCO JSON val split.")
flags.DEFINE_string("tfds_split", "train", "--data tfds: the split to train on.")
flags.DEFINE_string("tfds_name", "coco/2017", "--data tfds: the dataset name.")
flags.DEFINE_string("tfrecord_pattern", None, "--data tfrecord: file pattern (default "
                    "DATA_DIR/train*.tfrecord*); labels are category ids, mapped through the "
                    "val JSON's categories when present, else taken as 1..num_classes.")
flags.DEFINE_enum("evaluator", "pycocotools", ["pycocotools", "faster"],
                  "COCO evaluation: pycocotools, or faster-coco-eval's C++ COCOeval (same "
                  "numbers, quicker on large sets).")
flags.DEFINE_string("backbone_weights", None,
                    "Res2Net checkpoint (.pth, .safetensors, .weights.h5) for the backbone.")
flags.DEFINE_integer("steps", None, "Override the experiment's number of training steps.")
flags.DEFINE_integer("batch_size", None, "Override the global batch size.")
flags.DEFINE_integer("max_size", None, "Override the image size: resized to fit NxN.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored", "multi_worker",
                                          "tpu"],
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy tpu.")
flags.DEFINE_string("device", None, "Device for --strategy one_device (default: GPU 0 or CPU).")
flags.DEFINE_integer("checkpoint_every", 200, "Save a checkpoint every N steps (and at each "
                     "epoch end).")
flags.DEFINE_bool("check_images", True, "--data coco_json: decode every training (and, for "
                  "evaluation, validation) image once before starting, in parallel, so a "
                  "corrupt file stops the run up front with the list of bad files.")
flags.DEFINE_bool("skip_bad_images", False, "Train without the training images that do not "
                  "decode (or differ from their annotated size) instead of stopping; their "
                  "number is reported.")
flags.DEFINE_bool("deterministic", False, "Op determinism: two runs with the same seed, "
                  "cluster and thread settings (or a run killed and resumed) write the same "
                  "weights; refuses a TPU and ops without a deterministic kernel.")
flags.DEFINE_bool("verbose", False, "Print the traceback of an error, not just its message.")

PROG = "train/coco.py"


def fail(error: Exception) -> NoReturn:
    """One line (two with a list of bad images) on stderr and the error's exit status: 2 for
    bad flags or data, found before any work; the traceback only with --verbose."""
    sys.exit(report(error, PROG, FLAGS.verbose))


def main(argv) -> None:
    del argv
    try:
        run()
    except PreemptedError as stopped:  # a checkpoint was saved: not an error
        print(f"{PROG}: {stopped}", flush=True)
        sys.exit(stopped.exit_code)
    except Exception as error:  # noqa: BLE001  one line per error; --verbose for the traceback
        fail(error)


def run() -> None:
    config, name, folder = trainer.resolve_run(
        FLAGS.mode, experiment=FLAGS.experiment, model_dir=FLAGS.model_dir,
        checkpoint=FLAGS.checkpoint, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
        max_size=FLAGS.max_size)
    if FLAGS.mode in ("train", "train_and_eval"):
        if FLAGS.deterministic and strategy_error(FLAGS.strategy):
            raise ValueError(strategy_error(FLAGS.strategy))
        # The strategy first: multi_worker configures collectives, before any TF op runs.
        strategy = make_strategy(FLAGS.strategy, tpu=FLAGS.tpu, device=FLAGS.device)
        source = sources.open_source(FLAGS.data, config, FLAGS.data_dir,
                                     tfds_split=FLAGS.tfds_split, tfds_name=FLAGS.tfds_name,
                                     tfrecord_pattern=FLAGS.tfrecord_pattern,
                                     check_images=FLAGS.check_images,
                                     skip_bad_images=FLAGS.skip_bad_images)
        if FLAGS.mode == "train_and_eval":  # the val split is read each epoch: refuse it now
            sources.check_eval_data(config, FLAGS.data_dir, check_images=FLAGS.check_images)
        print(f"training data: {source.name} ({source.num_examples or 'unknown number of'} "
              "images)", flush=True)
        # train_and_eval: COCO AP of the val split at each epoch end (history, TensorBoard).
        eval_dir = FLAGS.data_dir if FLAGS.mode == "train_and_eval" else None
        detector = trainer.DetectionTrainer(
            config, source, folder, strategy=strategy, name=name,
            backbone_weights=FLAGS.backbone_weights, checkpoint_every=FLAGS.checkpoint_every,
            eval_data_dir=eval_dir, evaluator=FLAGS.evaluator,
            deterministic=FLAGS.deterministic)
        detector.train()
        if detector.chief and eval_dir is not None:  # the last epoch's evaluation
            print(json.dumps(detector.task.last_metrics), flush=True)
        return
    sources.check_eval_data(config, FLAGS.data_dir, check_images=FLAGS.check_images)
    task, model = trainer.load_trained(config, folder)
    height, width = config.data.max_size
    print(f"evaluating {folder}: {name or 'unnamed experiment'}, images resized to fit "
          f"{height}x{width}", flush=True)
    trainer.evaluate(task, model, FLAGS.data_dir, evaluator=FLAGS.evaluator)


if __name__ == "__main__":
    app.run(main)

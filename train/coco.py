"""Train or evaluate a two-stage detector on COCO-format data.

    python train/coco.py --experiment mask_rcnn_res2net50_fpn_synthetic \
        --data_dir data/shapes --model_dir runs/shapes
    python train/coco.py --experiment mask_rcnn_res2net50_fpn_synthetic --mode eval \
        --data_dir data/shapes --model_dir runs/shapes
    TF_CONFIG=... python train/coco.py --experiment ... --strategy multi_worker ...

Flags only; the work is in `keras_res2net.detection` (configs, task, trainer). Training runs
under the classification trainer's tf.distribute strategies (`--strategy`).
"""

from __future__ import annotations

from absl import app, flags

from keras_res2net.detection import configs, trainer
from keras_res2net.detection.data import sources
from keras_res2net.training.strategies import make_strategy

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", "mask_rcnn_res2net50_fpn_synthetic",
                    "Registered experiment: " + ", ".join(configs.list_experiments()))
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")
flags.DEFINE_string("data_dir", None, "Folder holding the COCO JSON files and image folders "
                    "(or the TFDS data_dir, or the TFRecords) "
                    "named in the experiment's data config.", required=True)
flags.DEFINE_string("model_dir", None, "Where weights are written and read.", required=True)
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


def main(argv) -> None:
    del argv
    config = configs.get_experiment(FLAGS.experiment)
    if FLAGS.steps is not None:
        scale = FLAGS.steps / (config.train.steps or FLAGS.steps)
        config.train.steps = FLAGS.steps
        config.train.decay_steps = tuple(int(s * scale) for s in config.train.decay_steps or ())
        config.train.warmup_steps = min(config.train.warmup_steps, FLAGS.steps // 4)
    if FLAGS.batch_size is not None:
        config.data.batch_size = FLAGS.batch_size
    if FLAGS.max_size is not None:
        config.data.max_size = (FLAGS.max_size, FLAGS.max_size)
    chief = True
    if FLAGS.mode in ("train", "train_and_eval"):
        # The strategy first: multi_worker configures collectives, before any TF op runs.
        strategy = make_strategy(FLAGS.strategy, tpu=FLAGS.tpu, device=FLAGS.device)
        source = sources.open_source(FLAGS.data, config, FLAGS.data_dir,
                                     tfds_split=FLAGS.tfds_split, tfds_name=FLAGS.tfds_name,
                                     tfrecord_pattern=FLAGS.tfrecord_pattern)
        print(f"training data: {source.name} ({source.num_examples or 'unknown number of'} "
              "images)", flush=True)
        detector = trainer.DetectionTrainer(
            config, source, FLAGS.model_dir, strategy=strategy,
            backbone_weights=FLAGS.backbone_weights, checkpoint_every=FLAGS.checkpoint_every)
        detector.train()
        task, model, chief = detector.task, detector.model, detector.chief
    else:
        task, model = trainer.load_trained(config, FLAGS.model_dir)
    if FLAGS.mode in ("eval", "train_and_eval") and chief:
        trainer.evaluate(task, model, FLAGS.data_dir, evaluator=FLAGS.evaluator)


if __name__ == "__main__":
    app.run(main)

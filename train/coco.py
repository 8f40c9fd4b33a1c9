"""Train or evaluate a two-stage detector on COCO-format data.

    python train/coco.py --experiment mask_rcnn_res2net50_fpn_synthetic \
        --data_dir data/shapes --model_dir runs/shapes
    python train/coco.py --experiment mask_rcnn_res2net50_fpn_synthetic --mode eval \
        --data_dir data/shapes --model_dir runs/shapes

Flags only; the work is in `keras_res2net.detection` (configs, task, trainer).
"""

from __future__ import annotations

from absl import app, flags

from keras_res2net.detection import configs, trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", "mask_rcnn_res2net50_fpn_synthetic",
                    "Registered experiment: " + ", ".join(configs.list_experiments()))
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")
flags.DEFINE_string("data_dir", None, "Folder holding the COCO JSON files and image folders "
                    "named in the experiment's data config.", required=True)
flags.DEFINE_string("model_dir", None, "Where weights are written and read.", required=True)
flags.DEFINE_string("backbone_weights", None,
                    "Res2Net checkpoint (.pth, .safetensors, .weights.h5) for the backbone.")
flags.DEFINE_integer("steps", None, "Override the experiment's number of training steps.")
flags.DEFINE_integer("batch_size", None, "Override the global batch size.")


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
    if FLAGS.mode in ("train", "train_and_eval"):
        task, model, _ = trainer.train(config, FLAGS.data_dir, FLAGS.model_dir,
                                       backbone_weights=FLAGS.backbone_weights)
    else:
        task, model = trainer.load_trained(config, FLAGS.model_dir)
    if FLAGS.mode in ("eval", "train_and_eval"):
        trainer.evaluate(task, model, FLAGS.data_dir)


if __name__ == "__main__":
    app.run(main)

r"""Train (or evaluate) DSS salient-object detection on a Res2Net.

    python train/saliency.py --data synthetic --model_dir runs/saliency
    python train/saliency.py --data DUTS-TR --val_data ECSSD --model_dir runs/duts \
        --init_weights ~/.keras/res2net/res2net50_26w_4s.weights.h5
    python train/saliency.py --mode eval --model_dir runs/saliency

Only parses flags; the work is in `keras_res2net.saliency` (config, task, data). Flags left
unset take the data's defaults (`--data synthetic`: generated scenes, a small Res2Net-50 at
64 px, a few minutes on 2 CPU cores; a folder: Res2Net-50 26w x 4s with DSS's decoder at
320 px). Rerunning the same command resumes. `--mode eval` evaluates the run folder's latest
checkpoint and writes eval_metrics.json there. Bad flags or data stop with one line (or the
list of bad image/mask pairs), exit 2, before anything is written; `--verbose` adds the
traceback. `--helpfull` lists every flag.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from keras_res2net.saliency import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming), or evaluate the "
                  "latest checkpoint of --model_dir (eval_metrics.json).")
# Data.
flags.DEFINE_string("data", "synthetic", "'synthetic' (generated scenes, no download) or a "
                    "folder holding images and same-named PNG masks (DUTS/ECSSD layout).")
flags.DEFINE_string("val_data", None, "A folder in the same layout to evaluate on at each "
                    "epoch end (synthetic: scenes of a held-out seed by default).")
flags.DEFINE_string("image_folder", None, "Name of the image sub-folder, if not recognised.")
flags.DEFINE_string("mask_folder", None, "Name of the mask sub-folder, if not recognised.")
flags.DEFINE_bool("skip_bad_images", False, "Leave out image/mask pairs that cannot be used "
                  "(unpaired, unequal sizes, not decodable) instead of stopping; counted.")
flags.DEFINE_integer("num_train", None, "--data synthetic: training scenes (1024).")
flags.DEFINE_integer("num_val", None, "--data synthetic: held-out scenes (128).")
flags.DEFINE_string("model_dir", "runs/saliency", "Checkpoints, TensorBoard, model.keras, "
                    "history.png. Rerunning the same command resumes from here.")
# Model.
flags.DEFINE_string("model", None, "Backbone variant (keras_res2net.list_models()).")
flags.DEFINE_list("layers", None, "Blocks per stage, e.g. 1,1,1,1 (default: the variant's).")
flags.DEFINE_integer("base_width", None, "Res2Net base width (default: the variant's).")
flags.DEFINE_integer("scale", None, "Res2Net scale (1 with --base_width 64: ResNet-50).")
flags.DEFINE_list("side_channels", None, "DSS side-output widths, side2..side6 (DSS: "
                  "128,256,256,512,512).")
flags.DEFINE_integer("image_size", None, "Training and inference size, a multiple of 32 "
                     "(synthetic 64; folders 320).")
flags.DEFINE_string("init_weights", None, "Backbone checkpoint: a .weights.h5 written by "
                    "python -m keras_res2net.convert, or a PyTorch checkpoint.")
# Recipe.
flags.DEFINE_integer("epochs", None, "Epochs (synthetic 4; folders 24).")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass).")
flags.DEFINE_integer("batch_size", None, "Global batch size (synthetic 16; folders 8).")
flags.DEFINE_float("learning_rate", None, "AdamW peak learning rate (synthetic 2e-3; "
                   "folders 1e-4).")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay (not on BatchNorm, biases).")
flags.DEFINE_integer("warmup_steps", None, "Linear warm-up steps (default: 5% of the run).")
flags.DEFINE_float("iou_weight", 0.0, "Add this weight times a soft-IoU loss to each map's "
                   "cross-entropy (0: DSS's loss).")
flags.DEFINE_float("crop_scale_min", 0.5, "Smallest random-resized-crop area.")
flags.DEFINE_bool("flip", True, "Random horizontal flips.")
flags.DEFINE_integer("seed", 0, "Seed for weights, scenes, data order and augmentation.")
# Execution.
flags.DEFINE_enum("strategy", "default", config_lib.STRATEGIES, "tf.distribute strategy; "
                  "multi_worker reads TF_CONFIG.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy tpu.")
flags.DEFINE_string("device", None, "Device for --strategy one_device.")
flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps (and at each "
                     "epoch end).")
flags.DEFINE_integer("max_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_bool("verbose", False, "Print the traceback of an error, not just its message.")


def config_from_flags() -> config_lib.SaliencyConfig:
    """The SaliencyConfig of the parsed flags (unresolved: None = the data's default)."""
    def ints(name):
        values = FLAGS[name].value
        try:
            return tuple(int(v) for v in values) if values is not None else None
        except ValueError as err:
            raise ValueError(f"--{name} expects comma-separated integers; got "
                             f"{','.join(values)!r}.") from err

    fields = {f.name for f in config_lib.dataclasses.fields(config_lib.SaliencyConfig)}
    values = {name: FLAGS[name].value for name in fields if name in FLAGS}
    values["layers"], values["side_channels"] = ints("layers"), ints("side_channels")
    if FLAGS.mode == "eval" and not FLAGS["data"].present:
        values["data"] = None  # evaluate on the run's own data (its record)
    return config_lib.SaliencyConfig(**values)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from absl import logging

    from keras_res2net.cli_errors import report

    if not FLAGS["verbosity"].present:  # TF's INFO lines (one per checkpoint) are noise here
        logging.set_verbosity(logging.WARNING)
    prog = os.path.basename(sys.argv[0])
    try:
        config = config_from_flags()
        from keras_res2net.saliency import task

        if FLAGS.mode == "eval":
            task.evaluate_run(config)
        else:
            task.run(config_lib.resolve(config))
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, prog, FLAGS.verbose)
    return 0


if __name__ == "__main__":
    app.run(main)

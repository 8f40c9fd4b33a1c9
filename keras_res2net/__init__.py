"""keras-res2net: Res2Net backbones for Keras 3, weight-compatible with the PyTorch reference."""

import os as _os
import sys as _sys


def _run_as_command_line() -> bool:
    """`python -m keras_res2net.<cli>`, a `res2net-*` console script, or one of the project's
    scripts (`train/`, `export/`, `benchmarks/` beside this package)."""
    argv = list(getattr(_sys, "orig_argv", ()))
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].startswith("keras_res2net")
    script = _os.path.abspath(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    folder = _os.path.dirname(script)
    package_parent = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    return _os.path.basename(script).startswith("res2net-") or (
        _os.path.basename(folder) in ("train", "export", "benchmarks")
        and _os.path.dirname(folder) == package_parent)


if _run_as_command_line():  # quiet TensorFlow's start-up before keras imports it
    from keras_res2net.cli_errors import quiet_tf_startup

    quiet_tf_startup()

from keras_res2net.fold import fold_batchnorm  # noqa: E402
from keras_res2net.imagenet import decode_predictions, preprocess_input  # noqa: E402
from keras_res2net.models import (  # noqa: E402
    Res2Net50,
    Res2Net50V1b,
    Res2Net101,
    Res2Net101V1b,
    Res2Net152,
    Res2Net152V1b,
    Res2Net200V1b,
    Res2NetDLA60,
    Res2NeXt29,
    Res2NeXt50,
    Res2NeXtDLA60,
    ResNeXt29,
    build_res2net,
    create_model,
    pyramid_model,
)
from keras_res2net.precision import with_precision  # noqa: E402
from keras_res2net.variants import (  # noqa: E402
    VARIANTS,
    PretrainedConfig,
    get_variant,
    list_models,
    pretrained_config,
)

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "PretrainedConfig",
    "Res2Net50",
    "Res2Net50V1b",
    "Res2Net101",
    "Res2Net101V1b",
    "Res2Net152",
    "Res2Net152V1b",
    "Res2Net200V1b",
    "Res2NeXt50",
    "Res2NetDLA60",
    "Res2NeXtDLA60",
    "Res2NeXt29",
    "ResNeXt29",
    "build_res2net",
    "decode_predictions",
    "fold_batchnorm",
    "preprocess_input",
    "create_model",
    "get_variant",
    "list_models",
    "pretrained_config",
    "pyramid_model",
    "with_precision",
]

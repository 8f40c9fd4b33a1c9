"""Command lines start quietly: TensorFlow's start-up noise is dropped, real errors are kept."""

import logging
import os

from keras_res2net import cli_errors

NOISE = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796214676.395722    6016 port.cc:153] oneDNN custom operations are on. You may see
I0000 00:00:1796214676.396346    6016 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
"""
CUINIT = ("E0000 00:00:1796214686.906859    6016 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
REAL = "E0000 00:00:1796214686.906859    6016 some_kernel.cc:12] Out of memory\n"


def test_noise_dropped_real_errors_kept():
    assert cli_errors.filter_startup_noise(NOISE + CUINIT + REAL) == REAL
    # With a CUDA driver present a failing cuInit is a real error: kept.
    assert cli_errors.filter_startup_noise(CUINIT + REAL) == CUINIT + REAL


def test_filtered_stderr_captures_the_file_descriptor(capfd):
    with cli_errors._filtered_stderr():
        os.write(2, (NOISE + CUINIT + REAL).encode())  # as C++ code writes, below Python
    assert capfd.readouterr().err == REAL


def test_sharding_callback_info_line_dropped(caplog):
    logger = logging.getLogger("tensorflow")
    drop = cli_errors._DropPythonNoise()
    logger.addFilter(drop)
    try:
        with caplog.at_level(logging.INFO, logger="tensorflow"):
            logger.info("Sharding callback duration: %s microseconds", 12)
            logger.info("a real message")
    finally:
        logger.removeFilter(drop)
    assert [r.getMessage() for r in caplog.records] == ["a real message"]


def test_tflite_noise_dropped(capfd):
    from keras_res2net.export.tflite import quiet_tflite

    with quiet_tflite():
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n"
                    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nreal problem\n")
    assert capfd.readouterr().err == "real problem\n"

"""End to end on one tiny trained run: it learns (field metrics on held-out scenes), --mode
eval writes its metrics, prediction writes maps at the original size and refuses to
overwrite, and every exported artifact's maps stay within their MAE bound of Keras'.

One module fixture trains the network the other tests use (the learning run, a few dozen
steps of a tiny Res2Net on 64 px scenes), so the trace and the training are paid once.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_res2net.cli_errors import UsageError
from keras_res2net.saliency import config as config_lib
from keras_res2net.saliency import task
from keras_res2net.saliency.config import SaliencyConfig
from keras_res2net.saliency.scenes import make_scene

LEARNING = dict(model="res2net50_26w_4s", layers=(1, 1, 1, 1), base_width=4, scale=2,
                side_channels=(8, 8, 8, 16, 16), image_size=64, num_train=128, num_val=16,
                batch_size=8, epochs=1, steps_per_epoch=64, learning_rate=3e-3, warmup_steps=8,
                seed=0)
# Spread of 12 seeded runs (seeds 0-11, one thread) on their held-out scenes after these 64
# steps: MAE 0.076-0.150, max F 0.803-0.889; untrained (seeds 0-2): MAE 0.44-0.59, max F
# 0.28-0.32. Bounds: a margin of 0.05 beyond the worst seed, far from the untrained network.
MAX_MAE = 0.20
MIN_MAX_F = 0.75


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "saliency"  # the folder name the docs use
    config = config_lib.resolve(SaliencyConfig(**LEARNING, model_dir=str(folder)))
    return folder, config, task.run(config)


@pytest.mark.slow
def test_learns_salient_objects(trained):
    folder, _, metrics = trained
    assert metrics["MAE"] <= MAX_MAE and metrics["maxF"] >= MIN_MAX_F, metrics
    history = json.loads((folder / "history.json").read_text())
    assert history[-1]["val_maxF"] == pytest.approx(metrics["maxF"])
    for name in ("model.keras", "saliency_config.json", "history.png"):
        assert (folder / name).exists(), name


@pytest.mark.slow
def test_eval_mode_writes_the_runs_metrics(trained):
    folder, config, metrics = trained
    result = task.evaluate_run(SaliencyConfig(data=None, model_dir=str(folder)))
    written = json.loads((folder / config_lib.EVAL_FILE).read_text())
    assert written == result and written["step"] == config.steps_per_epoch
    for name, value in metrics.items():
        assert written[name] == pytest.approx(value, abs=1e-6), name
    with pytest.raises(UsageError, match="belongs to another network"):
        task.run(config_lib.resolve(SaliencyConfig(**{**LEARNING, "base_width": 8},
                                                   model_dir=str(folder))))


@pytest.mark.slow
def test_predict_writes_maps_at_original_size_and_never_overwrites(trained, tmp_path, capsys):
    from keras_res2net.saliency import load_saliency
    from keras_res2net.saliency import predict as predict_cli

    folder, _, _ = trained
    image, _ = make_scene(99, 0, 96)
    wide = tmp_path / "images" / "wide.jpg"
    wide.parent.mkdir()
    Image.fromarray(image).resize((120, 80)).save(wide)
    out = tmp_path / "maps"
    assert predict_cli.main([str(wide.parent), "--checkpoint", str(folder),
                             "--out_dir", str(out)]) == 0
    with Image.open(out / "wide.png") as saved, Image.open(out / "wide_overlay.png") as shown:
        assert saved.size == shown.size == (120, 80) and saved.mode == "L"
        written = np.asarray(saved)
    before = os.path.getmtime(out / "wide.png")
    assert predict_cli.main([str(wide), "--checkpoint", str(folder),
                             "--out_dir", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.path.getmtime(out / "wide.png") == before
    # The Python call: path, PIL image, array or a list; unfolded and folded give one map.
    predictor = load_saliency(str(folder), fold=False)
    maps = predictor.predict([str(wide), Image.open(wide), np.asarray(Image.open(wide))])
    assert [m.shape for m in maps] == [(80, 120)] * 3
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)
    np.testing.assert_allclose(np.round(maps[0] * 255), written, atol=1)


@pytest.mark.slow
def test_export_formats_keep_the_maps(trained, tmp_path, capsys, monkeypatch):
    """TFLite fp32, fp16, int8 and ONNX, each loaded by its runtime and passing only within
    its map-MAE bound of the Keras model, through the exporter `res2net-export --task
    saliency` runs (one loaded model for the three runs: its load, folding and check scenes
    paid once); and the command line's checks and dispatch for the task."""
    from keras_res2net.export import cli, runner
    from keras_res2net.export import saliency as saliency_export

    folder, _, _ = trained
    common = ["--task", "saliency", "--checkpoint", str(folder), "--output", str(tmp_path),
              "--latency-runs", "0"]
    args = cli.build_parser().parse_args(common + ["--format", "tflite", "onnx"])
    serving = saliency_export.saliency_serving(args)
    samples = saliency_export.sample_images(None, serving.image_shape)
    for formats, quantize in ((["tflite", "onnx"], None), (["tflite"], "fp16"),
                              (["tflite"], "int8")):
        args.format, args.quantize = formats, quantize
        results = runner.run_exports(args, saliency_export.validate_saliency(args), serving,
                                     samples, saliency_export.judge_maps)
        assert [r.passed for r in results] == [True] * len(formats), results
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[ok]")]
    assert len(lines) == 4 and all("map MAE" in line for line in lines), out
    assert sorted(os.listdir(tmp_path)) == ["saliency.onnx", "saliency_fp16.tflite",
                                            "saliency_fp32.tflite", "saliency_int8.tflite"]
    # The command line: existing outputs refused, --task saliency routed to this exporter.
    assert cli.main(common + ["--format", "onnx"]) == 2
    assert "already exist" in capsys.readouterr().err
    routed = []
    monkeypatch.setattr(saliency_export, "run_exports",
                        lambda args, plan: routed.append(plan.paths) or [])
    cli.main(common + ["--format", "tflite", "--quantize", "fp16", "--force"])
    assert routed == [{"tflite": str(tmp_path / "saliency_fp16.tflite")}]

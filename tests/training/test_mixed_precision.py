"""--mixed_precision mixed_float16: loss scaling, float32 logits, a checkpoint that resumes
with the loss-scale optimizer's state, and the global policy put back for the next test."""

import keras
import pytest


@pytest.fixture
def float32_after():
    yield
    # Trainer sets the global policy for its process (train/imagenet.py runs one Trainer);
    # in one pytest process it must not leak into later tests.
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_mixed_float16_scales_the_loss_and_resumes(tmp_path, tiny_config, float32_after,
                                                   capsys):
    from keras_res2net.training import Trainer
    from keras_res2net.training.classification import CPU_FLOAT16_NOTE

    # Batches of 8, not 32: float16 kernels on a CPU are ~40x slower than float32 (3.3 s a
    # step of 8 digits, 19 s of 32), and what is checked here does not depend on the size.
    config = tiny_config(tmp_path, epochs=1, steps_per_epoch=2, batch_size=8,
                         mixed_precision="mixed_float16")
    trainer = Trainer(config)
    assert capsys.readouterr().out.splitlines() == [CPU_FLOAT16_NOTE]  # this is a CPU run
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.output.dtype == "float32"  # logits: softmax and loss in float32
    assert any(layer.compute_dtype == "float16" for layer in trainer.model.layers)
    trainer.optimizer.dynamic_scale.assign(1024.0)  # not the initial 2**15: must be restored
    trainer.train()
    assert int(trainer.step.numpy()) == 2

    resumed = Trainer(tiny_config(tmp_path, epochs=2, steps_per_epoch=2, batch_size=8,
                                  mixed_precision="mixed_float16"))
    assert resumed.restore() == 2
    assert float(resumed.optimizer.dynamic_scale.numpy()) == 1024.0
    result = resumed.train()
    assert int(resumed.step.numpy()) == 4 and result.top1 == result.top1  # not NaN
    exported = keras.saving.load_model(tmp_path / "model.keras")
    assert exported.output.dtype == "float32"

"""--mixed_precision mixed_float16: loss scaling, float32 logits, a checkpoint that resumes
with the loss-scale optimizer's state, and the global policy put back for the next test."""

import keras
import pytest
import tensorflow as tf


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

    # Batches of 8, not 32: float16 kernels on a CPU are ~35x slower than float32 (a step of
    # 8 digits 1.8 s, of 32 7.5 s), and what is checked here does not depend on the size.
    mixed = dict(steps_per_epoch=2, batch_size=8, mixed_precision="mixed_float16")
    trainer = Trainer(tiny_config(tmp_path, epochs=1, **mixed))
    # The note on a CPU (CI), none on a GPU machine: found here apart from the trainer's check.
    note = [] if tf.config.list_physical_devices("GPU") else [CPU_FLOAT16_NOTE]
    assert capsys.readouterr().out.splitlines() == note
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.output.dtype == "float32"  # logits: softmax and loss in float32
    assert any(layer.compute_dtype == "float16" for layer in trainer.model.layers)
    trainer.optimizer.dynamic_scale.assign(1024.0)  # not the initial 2**15: must be restored
    trainer.train()
    assert int(trainer.step.numpy()) == 2

    resumed = Trainer(tiny_config(tmp_path, epochs=2, **mixed))
    assert resumed.restore() == 2
    assert float(resumed.optimizer.dynamic_scale.numpy()) == 1024.0
    result = resumed.train()
    assert int(resumed.step.numpy()) == 4 and result.top1 == result.top1  # not NaN
    exported = keras.saving.load_model(tmp_path / "model.keras")
    assert exported.output.dtype == "float32"

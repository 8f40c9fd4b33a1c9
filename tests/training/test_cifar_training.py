"""A CIFAR model trains through the recipe on a prepared TFDS `cifar100` (mocked, generated
32x32 images; nothing downloads), with the 32-px defaults."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_res2net.training import TrainConfig, resolve_config, run
from keras_res2net.training.data import eval_dataset, open_source, train_dataset


def test_cifar_model_takes_the_32px_recipe():
    config = resolve_config(TrainConfig(data="cifar100", model="res2next29_6c_24w_4s"))
    assert (config.image_size, config.eval_crop_fraction, config.batch_size) == (32, 1.0, 128)
    assert config.weight_decay == 5e-4 and config.flip
    # ImageNet models keep the reference recipe.
    assert resolve_config(TrainConfig(data="cifar100")).image_size == 224


@pytest.mark.slow
def test_cifar100_trains_a_few_steps_and_exports(tmp_path):
    import tensorflow_datasets as tfds  # the `data` extra, part of `test`

    config = resolve_config(TrainConfig(
        data="cifar100", model="res2next29_6c_24w_4s", layers=(1, 1, 1), base_width=4,
        batch_size=8, epochs=1, steps_per_epoch=3, model_dir=str(tmp_path / "run"),
        shuffle_buffer=16, val_split="test"))  # mocked data has no split metadata to pick it
    with tfds.testing.mock_data(num_examples=16):
        source = open_source("cifar100", val_split="test")
        assert source.num_classes == 100 and source.splits == ("train", "test")
        # Evaluation at 32 px with crop fraction 1 is the stored image, normalised: no resize.
        image, _ = next(iter(source.records("test", None)))
        pixels = tf.io.decode_image(image, channels=3) if image.dtype == tf.string else image
        images, _, _ = next(iter(eval_dataset(source, config, None)))
        from keras_res2net import preprocess_input

        np.testing.assert_allclose(images[0].numpy(), preprocess_input(
            tf.cast(pixels, tf.float32)).numpy(), atol=1e-5)
        train_images, labels = next(iter(train_dataset(source, config, None, epoch=0)))
        assert train_images.shape == (8, 32, 32, 3) and labels.shape == (8, 100)
        result = run(config)
    assert np.isfinite(result.loss) and result.images == 16
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 100)
    assert model.get_layer("layer3_0_out").output.shape[1:3] == (8, 8)

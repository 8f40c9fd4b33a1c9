"""`TorchSGD` against a step-by-step NumPy port of PyTorch's `torch.optim.SGD`."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_res2net.detection.configs import get_experiment
from keras_res2net.detection.schedules import WarmupStepDecay
from keras_res2net.training.optim import TorchSGD

STEPS = 6


def _schedule():
    # Warm-up over 4 steps from 0.1x, then a 10x drop at step 5: the learning rate changes.
    return WarmupStepDecay(0.5, warmup_steps=4, warmup_ratio=0.1, decay_steps=(5,))


def _gradients(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(STEPS)]


def torch_sgd_reference(w, grads, lrs, momentum, weight_decay, nesterov=False,
                        decoupled=False):
    """PyTorch 2.x `torch.optim.SGD.step` (dampening 0), written out; `decoupled` instead
    decays as Keras (`w -= lr * wd * w` before the step)."""
    w = w.astype(np.float64)
    buf = None
    for grad, lr in zip(grads, lrs, strict=True):
        d_p = grad.astype(np.float64)
        if decoupled:
            w = w - lr * weight_decay * w
        elif weight_decay:
            d_p = d_p + weight_decay * w
        if momentum:
            buf = d_p.copy() if buf is None else momentum * buf + d_p
            d_p = d_p + momentum * buf if nesterov else buf
        w = w - lr * d_p
    return w


def _run(optimizer, w0, grads, exclude=False):
    variable = keras.Variable(w0)
    other = keras.Variable(w0)  # excluded from decay when `exclude`
    if exclude:
        optimizer.exclude_from_weight_decay(var_list=[other])
    for grad in grads:
        optimizer.apply_gradients([(grad, variable), (grad, other)])
    return np.asarray(variable), np.asarray(other)


@pytest.mark.parametrize("nesterov, decay", [(False, "coupled"), (True, "coupled"),
                                             (False, "decoupled")])
def test_matches_pytorch_sgd_step_by_step(nesterov, decay):
    w0 = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    grads = _gradients(w0.shape)
    lrs = [float(_schedule()(step)) for step in range(STEPS)]
    assert len(set(lrs)) >= 5
    got, undecayed = _run(TorchSGD(_schedule(), momentum=0.9, nesterov=nesterov,
                                   weight_decay=0.05, decay=decay), w0, grads, exclude=True)
    expected = torch_sgd_reference(w0, grads, lrs, 0.9, 0.05, nesterov,
                                   decoupled=decay == "decoupled")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(undecayed, torch_sgd_reference(w0, grads, lrs, 0.9, 0.0,
                                                              nesterov), rtol=1e-5, atol=1e-6)


def test_keras_sgd_is_not_pytorch_sgd():
    """What the detectors trained with before: Keras' SGD, whose decay is decoupled and
    whose momentum holds `lr * grad`; it misses the reference by far more than rounding."""
    w0 = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    grads = _gradients(w0.shape)
    lrs = [float(_schedule()(step)) for step in range(STEPS)]
    expected = torch_sgd_reference(w0, grads, lrs, 0.9, 0.05)
    keras_sgd, _ = _run(keras.optimizers.SGD(_schedule(), momentum=0.9, weight_decay=0.05),
                        w0, grads)
    assert np.abs(keras_sgd - expected).max() > 1e-2


def test_round_trips_its_config_and_refuses_unknown_forms():
    optimizer = TorchSGD(0.02, momentum=0.9, weight_decay=1e-4)
    clone = TorchSGD.from_config(optimizer.get_config())
    assert (clone.decay, clone.coupled_weight_decay, clone.weight_decay) == ("coupled", 1e-4,
                                                                            None)
    decoupled = TorchSGD.from_config(TorchSGD(0.02, weight_decay=1e-4,
                                              decay="decoupled").get_config())
    assert (decoupled.decay, decoupled.weight_decay) == ("decoupled", 1e-4)
    with pytest.raises(ValueError, match="decay must be one of"):
        TorchSGD(0.02, decay="l2")


def test_detection_task_trains_with_coupled_torch_sgd():
    from keras_res2net.detection.task import DetectionTask

    config = get_experiment("mask_rcnn_res2net101_fpn_coco")
    assert config.train.weight_decay_form == "coupled"
    optimizer = DetectionTask(config).build_optimizer()
    assert isinstance(optimizer, TorchSGD) and optimizer.coupled_weight_decay == 1e-4
    config.train.weight_decay_form = "decoupled"
    assert DetectionTask(config).build_optimizer().weight_decay == 1e-4

"""Salient object detection on Res2Net: the paper's SOD network (DSS), data, training,
metrics, prediction and export (docs/saliency.md).

    from keras_res2net.saliency import load_saliency, saliency_model
    maps = load_saliency("runs/saliency").predict(["photo.jpg"])   # maps at original size

`load_saliency` and `SaliencyPredictor` are imported on first use, so that
`python -m keras_res2net.saliency.predict` does not import its own module twice.
"""

from keras_res2net.saliency.model import inference_model, saliency_model

__all__ = ["SaliencyPredictor", "inference_model", "load_saliency", "saliency_model"]


def __getattr__(name: str):
    if name in ("SaliencyPredictor", "load_saliency"):
        from keras_res2net.saliency import predict

        return getattr(predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

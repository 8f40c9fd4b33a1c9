"""The salient-object field's metrics, computed by `pysodmetrics` (the `saliency` extra).

`SaliencyMetrics` accumulates (prediction, ground truth) pairs and reports what the SOD
literature reports, by the field's conventions (those of the MATLAB evaluation code the
package reproduces): each prediction is quantised to 8 bits and min-max normalised, the
ground truth is binary (values >= 128 of 255 are salient), and every figure is a mean over
images.

- `MAE`: mean absolute error between the normalised map and the binary mask.
- `maxF`, `meanF`: F-measure with beta^2 = 0.3 at each of the 256 thresholds (averaged over
  images per threshold), then its maximum and its mean over thresholds.
- `Sm`: S-measure (structure measure, alpha 0.5).
- `maxEm`, `meanEm`: E-measure (enhanced alignment) at each threshold, maximum and mean.
"""

from __future__ import annotations

import numpy as np

BETA_SQUARED = 0.3
METRIC_NAMES = ("MAE", "maxF", "meanF", "Sm", "maxEm", "meanEm")


def to_uint8_map(prediction: np.ndarray) -> np.ndarray:
    """A saliency map in [0, 1] as the 8-bit grey image SOD results are saved as."""
    values = np.asarray(prediction, np.float64)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def to_uint8_mask(mask: np.ndarray) -> np.ndarray:
    """A ground-truth mask (bool, {0, 1} or 0..255) as 0/255 uint8, binarised at 0.5."""
    values = np.asarray(mask)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    limit = 1.0 if values.max(initial=0) <= 1 else 255.0
    return (values >= limit / 2).astype(np.uint8) * 255


class SaliencyMetrics:
    """Accumulates maps and masks (`add`), then `results()`: `METRIC_NAMES` -> float."""

    def __init__(self):
        try:
            import py_sod_metrics as sod
        except ImportError as err:
            raise ImportError("the saliency metrics need pysodmetrics: pip install "
                              "'keras-res2net[saliency]'.") from err

        self._mae = sod.MAE()
        self._fm = sod.FmeasureV2({"fm": sod.FmeasureHandler(
            with_dynamic=True, with_adaptive=False, beta=BETA_SQUARED)})
        self._sm = sod.Smeasure()
        self._em = sod.Emeasure()
        self.count = 0

    def add(self, prediction: np.ndarray, mask: np.ndarray) -> None:
        """One image: `prediction` in [0, 1] (H, W) or (H, W, 1), `mask` of the same size."""
        pred, gt = to_uint8_map(prediction), to_uint8_mask(mask)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and mask {gt.shape} differ in size.")
        for metric in (self._mae, self._fm, self._sm, self._em):
            metric.step(pred=pred, gt=gt)
        self.count += 1

    def results(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no image was evaluated.")
        fm = self._fm.get_results()["fm"]["dynamic"]
        em = self._em.get_results()["em"]["curve"]
        return {"MAE": float(self._mae.get_results()["mae"]), "maxF": float(fm.max()),
                "meanF": float(fm.mean()), "Sm": float(self._sm.get_results()["sm"]),
                "maxEm": float(em.max()), "meanEm": float(em.mean())}


def evaluate_maps(predictions, masks) -> dict[str, float]:
    """`SaliencyMetrics` over paired sequences of maps and masks."""
    metrics = SaliencyMetrics()
    for prediction, mask in zip(predictions, masks, strict=True):
        metrics.add(prediction, mask)
    return metrics.results()

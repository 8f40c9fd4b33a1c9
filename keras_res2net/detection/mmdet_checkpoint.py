"""Read a mmdetection detector checkpoint and say what it holds, before any model is built.

The published Res2Net detectors are mmdetection 2.x files (`{"meta": ..., "state_dict": ...}`);
mmdetection 3.x saves the same model keys in the same wrapper, with more training state beside
it (`message_hub`, `optimizer`, `param_schedulers`), which is ignored. The model keys of these
five detectors are the same in 2.x and 3.x (RPNHead, FPN, Shared2FCBBoxHead, FCNMaskHead,
HTCMaskHead and FusedSemanticHead kept their module names); 1.x files keep the RoI heads at the
top level (`bbox_head.*`) with the background class first and are refused with the upgrade
hint. Everything here is NumPy: the architecture, depth, widths and class count are read from
key names and shapes so that the right Keras model can be built and a wrong pairing of file
and experiment explained in words.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np

from keras_res2net.checkpoints.mapping import CheckpointMismatchError
from keras_res2net.checkpoints.reader import read_state_dict

_WRAPPERS = ("state_dict", "model", "module")
COUNTER_SUFFIX = "num_batches_tracked"
COUNTER_REASON = "BatchNorm step counter (not used at inference)"
ARCHITECTURE_NAMES = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN",
                      "cascade_rcnn": "Cascade R-CNN", "cascade_mask_rcnn": "Cascade Mask R-CNN",
                      "htc": "HTC", "htc_without_semantic": "HTC without its semantic branch"}
# Experiment-name prefixes, longest first, so "htc_without_semantic" wins over "htc".
_PREFIXES = sorted(ARCHITECTURE_NAMES, key=len, reverse=True)


class DetectorCheckpointError(CheckpointMismatchError):
    """The checkpoint is not a detector this experiment can hold: wrong architecture, missing
    or unused keys, or shapes that do not fit. The message names every problem."""


@dataclasses.dataclass
class MMDetCheckpoint:
    """A detector state dict under mmdetection's key names, wrappers stripped.

    `tensors` holds what maps onto model weights; `set_aside` the keys dropped with why;
    `meta` the checkpoint's `meta` entry (empty when the file has none).
    """

    tensors: dict[str, np.ndarray]
    set_aside: dict[str, str]
    meta: dict
    source: str

    # -- construction --------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike) -> MMDetCheckpoint:
        """Read `path` (.pth via torch.load(weights_only=True), or .safetensors)."""
        path = os.fspath(path)
        try:
            raw = read_state_dict(path)
        except ValueError as error:
            raise ValueError(_short_read_error(path, str(error))) from error
        return cls.from_state_dict(raw, source=path)

    @classmethod
    def from_state_dict(cls, state: Mapping, source: str = "the state dict") -> MMDetCheckpoint:
        """Unwrap `{"state_dict": ...}` (2.x and 3.x) and `module.` prefixes; keep arrays."""
        if not isinstance(state, Mapping):
            raise TypeError(f"{source}: expected a mapping of key -> array, got "
                            f"{type(state).__name__}.")
        meta = state.get("meta") if isinstance(state.get("meta"), Mapping) else {}
        while True:
            inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), Mapping)),
                         None)
            if inner is None:
                break
            state = inner
        tensors = {str(k): np.asarray(v) for k, v in state.items()
                   if isinstance(v, np.ndarray) or _is_array_like(v)}
        if not tensors:
            raise DetectorCheckpointError(
                f"{source} holds no tensors (top-level keys: {', '.join(map(str, state))[:200]}).")
        if all(key.startswith("module.") for key in tensors):
            tensors = {key[len("module."):]: value for key, value in tensors.items()}
        set_aside = {key: COUNTER_REASON for key in tensors if key.endswith(COUNTER_SUFFIX)}
        for key in set_aside:
            del tensors[key]
        return cls(tensors=tensors, set_aside=set_aside, meta=dict(meta), source=source)

    # -- what the keys say ---------------------------------------------------------------
    def _has(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.tensors)

    def _stages(self, head: str) -> int:
        """0: no such head; 1: a single head (`roi_head.<head>.*`); n: heads 0..n-1."""
        pattern = re.compile(rf"^roi_head\.{head}\.(\d+)\.")
        indices = {int(m.group(1)) for key in self.tensors if (m := pattern.match(key))}
        if indices:
            return max(indices) + 1
        return 1 if self._has(f"roi_head.{head}.") else 0

    @property
    def box_stages(self) -> int:
        return self._stages("bbox_head")

    @property
    def mask_stages(self) -> int:
        return self._stages("mask_head")

    @property
    def cascade(self) -> bool:
        """Box heads indexed by stage (`roi_head.bbox_head.0.*`)."""
        return self._has("roi_head.bbox_head.0.")

    @property
    def has_semantic(self) -> bool:
        return self._has("roi_head.semantic_head.")

    @property
    def mask_info_flow(self) -> bool:
        """HTC's mask heads after the first take the previous one's features (`conv_res`)."""
        return any(re.match(r"^roi_head\.mask_head\.\d+\.conv_res\.", k) for k in self.tensors)

    @property
    def architecture(self) -> str | None:
        """One of ARCHITECTURE_NAMES, or None when the keys hold no two-stage detector."""
        if not self.box_stages:
            return None
        if self.cascade:
            if self.has_semantic:
                return "htc"
            if self.mask_info_flow:
                return "htc_without_semantic"
            return "cascade_mask_rcnn" if self.mask_stages else "cascade_rcnn"
        return "mask_rcnn" if self.mask_stages else "faster_rcnn"

    def stage_blocks(self) -> tuple[int, ...]:
        """Blocks per backbone stage (`backbone.layerN.M.*`), e.g. (3, 4, 23, 3) for R2-101."""
        blocks: dict[int, set[int]] = {}
        for key in self.tensors:
            if m := re.match(r"^backbone\.layer(\d+)\.(\d+)\.", key):
                blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        return tuple(max(blocks[stage]) + 1 for stage in sorted(blocks))

    def width_and_scale(self) -> tuple[int, int] | None:
        """Res2Net `(base_width, scale)` from layer1's first block, None if absent."""
        convs = self.tensors.get("backbone.layer1.0.convs.0.weight")
        conv1 = self.tensors.get("backbone.layer1.0.conv1.weight")
        if convs is None or conv1 is None or convs.ndim != 4 or conv1.ndim != 4:
            return None
        width = int(convs.shape[0])
        return width, int(conv1.shape[0]) // width

    def _first_box_key(self, name: str) -> str:
        return f"roi_head.bbox_head.{'0.' if self.cascade else ''}{name}"

    @property
    def num_classes(self) -> int | None:
        """Object classes (fc_cls has one more row: mmdetection's background, last)."""
        cls = self.tensors.get(self._first_box_key("fc_cls.weight"))
        return None if cls is None or cls.ndim != 2 else int(cls.shape[0]) - 1

    def class_agnostic(self) -> bool | None:
        """Whether every box head regresses one box (fc_reg: 4 rows), None if unknown."""
        keys = ([f"roi_head.bbox_head.{s}.fc_reg.weight" for s in range(self.box_stages)]
                if self.cascade else ["roi_head.bbox_head.fc_reg.weight"])
        rows = {self.tensors[k].shape[0] for k in keys if k in self.tensors}
        return None if len(rows) != 1 else rows == {4}

    def class_names(self) -> list[str] | None:
        """Class names stored in `meta` (2.x: `CLASSES`; 3.x: `dataset_meta.classes`)."""
        names = self.meta.get("CLASSES")
        if names is None and isinstance(self.meta.get("dataset_meta"), Mapping):
            names = self.meta["dataset_meta"].get("classes")
        return [str(n) for n in names] if isinstance(names, (list, tuple)) else None

    # -- checks --------------------------------------------------------------------------
    def check_is_detector(self) -> None:
        """Refuse files that hold no mmdetection two-stage detector, saying what they are."""
        if (self._has("bbox_head.") or self._has("mask_head.")) and not self._has("roi_head."):
            raise DetectorCheckpointError(
                f"{self.source} has its RoI heads at the top level (bbox_head.*, mask_head.*): "
                "a mmdetection 1.x checkpoint, whose background class comes first. Upgrade it "
                "with mmdetection 2.x's tools/model_converters/upgrade_model_version.py first.")
        missing = [words for prefix, words in (
            ("neck.", "no neck (neck.*)"), ("rpn_head.", "no RPN head (rpn_head.*)"),
            ("roi_head.", "no RoI heads (roi_head.*)")) if not self._has(prefix)]
        if len(missing) == 3:
            backbone = self._has("backbone.") or self._has("conv1.") or self._has("stem.")
            what = ("a backbone or classification checkpoint" if backbone
                    else "not a mmdetection detector checkpoint")
            sample = ", ".join(sorted(self.tensors)[:4])
            raise DetectorCheckpointError(
                f"{self.source} has {', '.join(missing)}: {what} (keys such as {sample}). "
                "Load a backbone checkpoint with DetectionTask(config).build_model("
                "backbone_weights=...), or pass a detector checkpoint.")
        if missing:
            raise DetectorCheckpointError(
                f"{self.source} is an incomplete detector: it has {' and '.join(missing)}.")
        if not self._has("backbone."):
            raise DetectorCheckpointError(f"{self.source} has no backbone (backbone.*).")


def _short_read_error(path: str, message: str) -> str:
    """torch's messages run to a dozen lines: keep one, and for a file that needs pickled
    objects say what to do instead."""
    if "Weights only load failed" in message:  # torch.load(weights_only=True) refused
        found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        what = f" (it pickles {found.group(1)})" if found else ""
        return (f"{path!r} needs unpickling of code or objects{what}, which torch.load("
                "weights_only=True) refuses. Convert it to .safetensors in a trusted PyTorch "
                "environment: safetensors.torch.save_file(torch.load(path, weights_only=False)"
                "['state_dict'], 'model.safetensors'), and pass that file.")
    return message.strip().splitlines()[0]


def _is_array_like(value) -> bool:
    return isinstance(value, np.generic)


def suggest_experiment(architecture: str, experiment: str | None, registered) -> str:
    """The registered experiment of `architecture` with `experiment`'s suffix (sizes), else
    the COCO one: `faster_rcnn_res2net50_fpn_synthetic` for a Faster R-CNN file given to
    `mask_rcnn_res2net50_fpn_synthetic`."""
    registered = set(registered)
    if experiment:
        for prefix in _PREFIXES:
            if experiment.startswith(prefix + "_"):
                candidate = architecture + experiment[len(prefix):]
                if candidate in registered:
                    return candidate
                break
    return f"{architecture}_res2net101_fpn_coco"


def _stage_words(stages: int, head: str) -> str:
    if stages == 1:
        return f"one {head} (roi_head.{head}.*)"
    return f"{stages} cascade {head}s (roi_head.{head}.0-{stages - 1}.*)"


def architecture_problems(checkpoint: MMDetCheckpoint, model_config) -> list[str]:
    """What the checkpoint has that `model_config` (a ModelConfig) lacks and vice versa."""
    cascade = model_config.cascade
    want_box = cascade.num_stages if cascade is not None else 1
    want_cascade = cascade is not None
    htc = model_config.htc
    want_semantic = htc is not None and htc.semantic
    want_flow = htc is not None and htc.mask_info_flow
    problems = []
    have_box = checkpoint.box_stages
    if checkpoint.cascade != want_cascade or have_box != want_box:
        problems.append(f"the checkpoint has {_stage_words(have_box, 'bbox_head')} where the "
                        f"experiment has {_stage_words(want_box, 'bbox_head')}")
    have_mask = checkpoint.mask_stages
    if model_config.include_mask and not have_mask:
        problems.append("the checkpoint has no mask head (roi_head.mask_head.*)")
    elif have_mask and not model_config.include_mask:
        problems.append("the checkpoint has a mask head (roi_head.mask_head.*) the experiment "
                        "lacks")
    elif have_mask and have_mask != want_box and checkpoint.cascade == want_cascade:
        problems.append(f"the checkpoint has {_stage_words(have_mask, 'mask_head')} where the "
                        f"experiment has {_stage_words(want_box, 'mask_head')}")
    if want_semantic and not checkpoint.has_semantic:
        problems.append("the checkpoint has no semantic head (roi_head.semantic_head.*)")
    elif checkpoint.has_semantic and not want_semantic:
        problems.append("the checkpoint has a semantic head (roi_head.semantic_head.*) the "
                        "experiment lacks")
    if have_mask and model_config.include_mask and checkpoint.mask_info_flow != want_flow:
        problems.append(
            "the checkpoint's mask heads " + ("pass" if checkpoint.mask_info_flow else
                                              "do not pass")
            + " features on (HTC's mask information flow, roi_head.mask_head.N.conv_res.*)"
            + (" but the experiment's do not" if checkpoint.mask_info_flow else
               " but the experiment's do"))
    return problems


def check_architecture(checkpoint: MMDetCheckpoint, model_config, experiment: str | None,
                       registered=()) -> None:
    """Raise DetectorCheckpointError naming the key groups when the file is another detector."""
    checkpoint.check_is_detector()
    problems = architecture_problems(checkpoint, model_config)
    if not problems:
        return
    found = checkpoint.architecture
    what = experiment or f"the experiment ({model_config.architecture})"
    message = f"{checkpoint.source} does not fit {what}: " + "; ".join(problems) + "."
    if found is not None:
        article = "an" if found.startswith("htc") else "a"
        message += (f" It is {article} {ARCHITECTURE_NAMES[found]}: use "
                    f"{suggest_experiment(found, experiment, registered)}.")
    raise DetectorCheckpointError(message)

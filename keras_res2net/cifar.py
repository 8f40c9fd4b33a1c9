"""The paper's CIFAR-100 models: Res2NeXt-29 and its ResNeXt-29 baselines (Table 4).

Res2Net paper (Gao et al., TPAMI 2021), Sec. 4.3: "The ResNeXt-29, 8c x 64w is used as the
baseline model. We only replace the original basic block with our proposed Res2Net module while
keeping other configurations unchanged." So every model here is the ResNeXt-29 CIFAR network
(Xie et al. 2017): a 3x3 stem conv (64 channels, stride 1, no pooling) for 32x32 images, three
stages of three bottleneck blocks (planes 64, 128, 256; expansion 4; strides 1, 2, 2), global
average pooling and a classifier. ResNeXt-29 is the same block at scale 1 (one grouped 3x3 conv
of width `cardinality x base_width`), so one trunk builds all of them.

One difference from the ImageNet Res2NeXt: the first block of each stage convolves all `scale`
splits (`stage_conv_last`) instead of average-pooling the last one. The paper's code for CIFAR
is not published; this is the variant whose parameter counts reproduce Table 4 (all three
Res2NeXt rows to the printed 0.1M), where the ImageNet block falls 0.55-0.84M short
(docs/cam-and-cifar.md has the arithmetic).

`CIFAR_TABLE` is the one table of these variants; `variants.py` registers it with
`create_model` and `list_models` (family "cifar").
"""

from __future__ import annotations

import dataclasses

from keras_res2net.blocks import conv_bn_relu
from keras_res2net.trunks import bottle2neck_stages

CIFAR_PLANES = (64, 128, 256)
CIFAR_LAYERS = (3, 3, 3)  # 29 = 9 blocks x 3 layers + stem + classifier
CIFAR_STEM = 64
CIFAR_INPUT_SIZE = 32
CIFAR_CLASSES = 100
EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class CifarRow:
    """One model of the paper's Table 4: cardinality c, width w, scale s, and its size.

    `paper_params` (millions) and `paper_top1_error` (%) are printed in Table 4;
    `reference_params` is this architecture's exact count with `CIFAR_CLASSES` classes.
    """

    name: str
    cardinality: int
    base_width: int
    scale: int
    paper_params: float
    paper_top1_error: float
    reference_params: int


CIFAR_TABLE: tuple[CifarRow, ...] = (
    CifarRow("resnext29_8c_64w", 8, 64, 1, 34.4, 17.90, 34_518_948),
    CifarRow("resnext29_16c_64w", 16, 64, 1, 68.1, 17.31, 68_247_460),
    CifarRow("res2next29_6c_24w_4s", 6, 24, 4, 24.3, 16.98, 24_360_932),
    CifarRow("res2next29_8c_25w_4s", 8, 25, 4, 33.8, 16.93, 33_905_236),
    CifarRow("res2next29_6c_24w_6s", 6, 24, 6, 36.7, 16.79, 36_801_380),
)


def cifar_trunk(x, *, layers_per_stage, base_width: int, scale: int, cardinality: int,
                fuse_stage_convs: bool = False) -> dict:
    """3x3 stem (no pooling) plus three stages of Bottle2neck blocks at strides 1, 2, 4.

    Returns `{"P1": stride 1, "P2": stride 2, "P3": stride 4}` block outputs; on a 32x32 image
    the last stage is 8x8 (the map Grad-CAM reads). Layer names follow the ImageNet trunk
    (`conv1`, `layer1_0_conv1`, ...), so stage names work alike.
    """
    x = conv_bn_relu(x, CIFAR_STEM, 3, name="conv1", bn_name="bn1", relu_name="relu")
    return bottle2neck_stages(
        x, CIFAR_STEM, CIFAR_PLANES, layers_per_stage, expansion=EXPANSION,
        base_width=base_width, scale=scale, cardinality=cardinality, stage_conv_last=True,
        fuse_stage_convs=fuse_stage_convs, first_level=1)

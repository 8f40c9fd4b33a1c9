"""The one table of Res2Net variants.

Every constructor, the checkpoint converter, the README table and the tests read this table;
nothing else knows a variant's depth, width or scale. Names follow the official
Res2Net-PretrainedModels repository, with timm's names as aliases.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from keras_res2net import cifar

OFFICIAL_BASE = "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/"
OFFICIAL_REPO = "https://github.com/Res2Net/Res2Net-PretrainedModels"


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Architecture of one published variant plus what the reference says about it.

    `family` is "resnet" (stem + four stages of Bottle2neck blocks) or "dla" (the DLA-60 tree
    with Res2Net blocks). `deep_stem`/`avg_down` together make the v1b ("d") design.
    `reference_params` is the reference's parameter count with 1000 classes;
    `reference_top1` its ImageNet top-1 (timm eval at 224) where published.
    """

    name: str
    family: str
    layers: tuple[int, ...]
    base_width: int
    scale: int
    cardinality: int = 1
    deep_stem: bool = False
    avg_down: bool = False
    reference_params: int | None = None
    reference_top1: float | None = None
    checkpoint_url: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def is_v1b(self) -> bool:
        return self.deep_stem and self.avg_down


_RESNET50 = (3, 4, 6, 3)
_RESNET101 = (3, 4, 23, 3)
_DLA60_LEVELS = (1, 1, 1, 2, 3, 1)

VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in [
        VariantSpec("res2net50_48w_2s", "resnet", _RESNET50, 48, 2,
                    reference_params=25_287_304, reference_top1=77.53,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_48w_2s-afed724a.pth"),
        VariantSpec("res2net50_26w_4s", "resnet", _RESNET50, 26, 4,
                    reference_params=25_699_120, reference_top1=77.99,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_26w_4s-06e79181.pth"),
        VariantSpec("res2net50_14w_8s", "resnet", _RESNET50, 14, 8,
                    reference_params=25_059_816, reference_top1=78.14,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_14w_8s-6527dddc.pth"),
        VariantSpec("res2net50_26w_6s", "resnet", _RESNET50, 26, 6,
                    reference_params=37_051_448, reference_top1=78.59,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_26w_6s-19041792.pth"),
        VariantSpec("res2net50_26w_8s", "resnet", _RESNET50, 26, 8,
                    reference_params=48_403_776, reference_top1=78.95,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_26w_8s-2c7c9f12.pth"),
        VariantSpec("res2net101_26w_4s", "resnet", _RESNET101, 26, 4,
                    reference_params=45_206_688, reference_top1=79.19,
                    checkpoint_url=OFFICIAL_BASE + "res2net101_26w_4s-02a759a1.pth"),
        VariantSpec("res2next50", "resnet", _RESNET50, 4, 4, cardinality=8,
                    reference_params=24_671_464, reference_top1=78.24,
                    checkpoint_url=OFFICIAL_BASE + "res2next50_4s-6ef7e7bf.pth"),
        VariantSpec("res2net50_v1b_26w_4s", "resnet", _RESNET50, 26, 4,
                    deep_stem=True, avg_down=True,
                    reference_params=25_718_352, reference_top1=80.28,
                    checkpoint_url=OFFICIAL_BASE + "res2net50_v1b_26w_4s-3cf99910.pth",
                    aliases=("res2net50d",)),
        VariantSpec("res2net101_v1b_26w_4s", "resnet", _RESNET101, 26, 4,
                    deep_stem=True, avg_down=True,
                    reference_params=45_225_920, reference_top1=81.24,
                    checkpoint_url=OFFICIAL_BASE + "res2net101_v1b_26w_4s-0812c246.pth",
                    aliases=("res2net101d",)),
        # 152/200: counts of timm's ResNet built like res2net50d (tools/make_reference_fixtures.py)
        VariantSpec("res2net152_v1b_26w_4s", "resnet", (3, 8, 36, 3), 26, 4,
                    deep_stem=True, avg_down=True, reference_params=61_294_480),
        VariantSpec("res2net200_v1b_26w_4s", "resnet", (3, 12, 48, 3), 26, 4,
                    deep_stem=True, avg_down=True, reference_params=76_215_536),
        VariantSpec("dla60_res2net", "dla", _DLA60_LEVELS, 28, 4,
                    reference_params=20_848_072, reference_top1=78.48,
                    checkpoint_url=OFFICIAL_BASE + "res2net_dla60_4s-d88db7f9.pth"),
        VariantSpec("dla60_res2next", "dla", _DLA60_LEVELS, 4, 4, cardinality=8,
                    reference_params=17_032_984, reference_top1=78.49,
                    checkpoint_url=OFFICIAL_BASE + "res2next_dla60_4s-d327927b.pth"),
    ]
}

# The paper's CIFAR-100 models (Table 4; family "cifar", 32x32 images, reference_params with
# 100 classes); their own table is `cifar.CIFAR_TABLE`.
VARIANTS.update({
    row.name: VariantSpec(row.name, "cifar", cifar.CIFAR_LAYERS, row.base_width, row.scale,
                          cardinality=row.cardinality, reference_params=row.reference_params)
    for row in cifar.CIFAR_TABLE
})

ALIASES: dict[str, str] = {alias: spec.name for spec in VARIANTS.values() for alias in spec.aliases}

#: Channel widths of the DLA-60 levels (timm `dla60_*`), shared by both DLA variants.
DLA60_CHANNELS = (16, 32, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """How a checkpoint expects its images: timm's `pretrained_cfg` fields.

    Evaluation resizes the shorter side to `floor(input_size / crop_pct)` with
    `interpolation`, centre-crops `input_size`, scales to [0, 1] and normalises with
    `mean`/`std` per RGB channel (timm's `transforms_imagenet_eval`).
    """

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


#: timm's `_cfg` in res2net.py and dla.py: every published ImageNet Res2Net checkpoint.
IMAGENET_PRETRAINED = PretrainedConfig()

#: Per-variant settings where a variant's checkpoints differ from `IMAGENET_PRETRAINED`; the
#: others use the default. The CIFAR models (no published weights) take the whole 32x32 image,
#: normalised as this project's training recipe normalises every model (ImageNet mean/std), so
#: `predict` and the CAM tool see what `train/imagenet.py` trained on.
PRETRAINED_CONFIGS: dict[str, PretrainedConfig] = {
    row.name: PretrainedConfig(input_size=32, crop_pct=1.0) for row in cifar.CIFAR_TABLE
}


def pretrained_config(name: str) -> PretrainedConfig:
    """The reference's preprocessing for variant `name` (official name or timm alias)."""
    return PRETRAINED_CONFIGS.get(get_variant(name).name, IMAGENET_PRETRAINED)


def list_models(pattern: str | list[str] | tuple[str, ...] = "") -> list[str]:
    """Canonical variant names in table order, filtered like timm's `list_models(filter)`.

    `pattern` is an fnmatch wildcard ("res2net50*", "*v1b*") or a list of them; a variant
    matches if its name or one of its timm aliases does. "" lists every variant.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    patterns = [p.strip().lower() for p in patterns if p and p.strip()]
    if not patterns:
        return list(VARIANTS)
    return [name for name, spec in VARIANTS.items()
            if any(fnmatch.fnmatchcase(candidate, p)
                   for p in patterns for candidate in (name, *spec.aliases))]


def get_variant(name: str) -> VariantSpec:
    """Look a variant up by official name or timm alias; unknown names list the known ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in VARIANTS:
        known = ", ".join(list(VARIANTS) + sorted(ALIASES))
        raise ValueError(f"Unknown Res2Net variant {name!r}. Known variants: {known}.")
    return VARIANTS[key]

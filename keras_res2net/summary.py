"""Build every Res2Net variant and print parameters and GMACs next to the reference's.

`python -m keras_res2net.summary [--size 224] [--models a,b]`: the project's default job
until training lands; it needs no download and proves every table entry builds.
"""

from __future__ import annotations

import argparse
import time

import keras

from keras_res2net import variants
from keras_res2net.flops import count_macs
from keras_res2net.models import create_model


def trainable_params(model: keras.Model) -> int:
    """Parameters as PyTorch counts them (BatchNorm running statistics excluded)."""
    return sum(int(keras.ops.size(weight)) for weight in model.trainable_weights)


def variant_rows(names: list[str], size: int):
    """Yield (name, params, reference params, GMACs, reference top-1, build seconds)."""
    for name in names:
        spec = variants.get_variant(name)
        start = time.perf_counter()
        model = create_model(name, input_shape=(size, size, 3))
        seconds = time.perf_counter() - start
        yield (name, trainable_params(model), spec.reference_params,
               count_macs(model) / 1e9, spec.reference_top1, seconds)
        keras.backend.clear_session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--models", default=",".join(variants.list_models()),
                        help="comma-separated variant names (default: all)")
    args = parser.parse_args(argv)
    names = [name for name in args.models.split(",") if name]
    header = (f"{'variant':24s} {'params':>12s} {'reference':>12s} {'match':>5s} "
              f"{'GMACs@' + str(args.size):>10s} {'top-1 (ref)':>11s} {'build s':>7s}")
    print(header)
    print("-" * len(header))
    matched = compared = 0
    for name, params, ref, gmacs, top1, seconds in variant_rows(names, args.size):
        match = "-" if ref is None else ("yes" if params == ref else "NO")
        compared += ref is not None
        matched += ref is not None and params == ref
        print(f"{name:24s} {params:>12,d} {ref or 0:>12,d} {match:>5s} {gmacs:>10.2f} "
              f"{top1 or 0:>11.2f} {seconds:>7.1f}", flush=True)
    print(f"\n{len(names)} variants built; parameter counts equal the reference for "
          f"{matched}/{compared} with a published count.")
    return 0 if matched == compared else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared fixtures for the detection tests: a small generated shapes dataset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shapes_val(tmp_path_factory):
    """Six generated 128x128 images with exact boxes and masks (seed 7)."""
    from keras_res2net.detection.data.synthetic import write_split

    root = tmp_path_factory.mktemp("shapes")
    json_path = write_split(root, "val", 6, seed=7)
    return json_path, root / "val"


@pytest.fixture(scope="session")
def shapes_semantic(tmp_path_factory):
    """The same six images written with semantic maps: (json, image dir, semantic dir)."""
    from keras_res2net.detection.data.synthetic import write_split

    root = tmp_path_factory.mktemp("shapes_semantic")
    json_path = write_split(root, "val", 6, seed=7, semantic=True)
    return json_path, root / "val", root / "val_semantic"

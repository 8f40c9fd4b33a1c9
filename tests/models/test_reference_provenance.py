"""The timm fixtures' seeded weights and images are still what they were when recorded.

Both tools/make_reference_fixtures.py and the parity tests draw the weights and images from
NumPy's `default_rng` (tests/reference_data.py), whose streams NumPy does not promise to keep
across versions. `fixtures/reference/provenance.json` records the NumPy version and a sha256
of each fixture's draws; if a NumPy upgrade changed them, this fails with that explanation
instead of every parity test failing as if the model were wrong.
"""

import json

import numpy as np
import pytest
from reference_data import PROVENANCE, fixture_digests

RECORDED = json.loads(PROVENANCE.read_text())
# The full-depth fixtures draw from the same function with the same streams (and cost
# seconds each): the reduced ones are enough to notice a change.
CHECKED = sorted(name for name in RECORDED["fixtures"] if not name.endswith("_full"))


@pytest.mark.parametrize("name", CHECKED)
def test_seeded_draws_match_the_recorded_digests(name):
    numpy_then = RECORDED["recorded_with"]["numpy"]
    assert fixture_digests(name) == RECORDED["fixtures"][name], (
        f"NumPy {np.__version__} draws other seeded weights or images for fixture {name} "
        f"than NumPy {numpy_then} did when the fixtures were recorded "
        f"({RECORDED['recorded_with']['date']}): default_rng's streams changed. Regenerate "
        "the fixtures (make fixtures) with this NumPy or pin NumPy to the recorded version.")

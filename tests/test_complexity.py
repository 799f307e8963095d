"""Every row of tools/complexity.py's reference table matches within 0.5% (issue 3 acceptance)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import complexity as table  # noqa: E402


@pytest.mark.parametrize('row', table.REFERENCE, ids=[r[0] for r in table.REFERENCE])
def test_params_and_macs_match_reference(row):
    label, name, kw, width, size, ref_p, ref_m, _ = row
    params, macs = table.measure(name, kw, width, size)
    if ref_p is not None:
        assert abs(params / 1e6 - ref_p) / ref_p < 0.005, (label, params)
    assert abs(macs / 1e9 - ref_m) / ref_m < 0.005, (label, macs)

"""Every row of tools/complexity.py's reference table matches within 0.5% (issue 3 acceptance).

DLA-X rows compare dynscale's count plus the reference's unused projections (``UNUSED_IN_REFERENCE``); that
share is checked here against the authors' manifests, exactly for the parameters."""
import math
import os
import sys

import pytest
from official_files import MANIFEST_DIR, manifest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import complexity as table  # noqa: E402


@pytest.mark.parametrize('row', table.REFERENCE, ids=[r[0] for r in table.REFERENCE])
def test_params_and_macs_match_reference(row):
    label, name, kw, width, size, ref_p, ref_m, _ = row
    params, macs = table.comparable(name, *table.measure(name, kw, width, size))
    if ref_p is not None:
        assert abs(params / 1e6 - ref_p) / ref_p < 0.005, (label, params)
    assert abs(macs / 1e9 - ref_m) / ref_m < 0.005, (label, macs)


@pytest.mark.skipif(not os.path.isdir(MANIFEST_DIR), reason=f'the official manifests are missing: {MANIFEST_DIR}')
@pytest.mark.parametrize('name', ['dla60x', 'dla60x_elastic', 'dla102x', 'dla102x_elastic'])
def test_unused_projections_of_the_reference_are_what_the_manifest_says(name):
    """The projections of tree nodes without a root of their own (depth > 1) in the authors' file: their parameters
    are exactly the difference to dynscale's model, their MACs (1x1 conv at the level's 224 / 2^N resolution) the
    declared share."""
    import backbones

    rows = manifest(name)['state_dict']
    keys = {r[0] for r in rows}
    dead = [r for r in rows if '.project.' in r[0] and r[3] == 'parameter'
            and r[0].rsplit('.project.', 1)[0] + '.root.conv.weight' not in keys]
    params = sum(math.prod(r[1]) for r in dead)
    macs = 0
    for key, shape, *_ in dead:
        if len(shape) == 4:
            level = int(key.split('.')[1][len('level'):])
            macs += shape[0] * shape[1] * (224 // 2 ** level) ** 2
    assert (params, macs) == table.UNUSED_IN_REFERENCE[name]
    model = backbones.create(name)
    assert backbones.count_params(model) + params == manifest(name)['parameter_count']

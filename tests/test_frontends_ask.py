"""The frontends (``plugins/``, ``tools/``) ask the training core and the capability table instead of branching on a
method or family name (issue 26): every string constant that is a registered method (``backbones.training.POLICIES``)
or family (``backbones.capabilities.FAMILY_CAPABILITIES``) name sits in one of the places listed in ``ALLOWED``
(configs, presets, registrations and command-line defaults), outside docstrings, comments and ``help=`` texts."""
import ast
import os

import pytest

from backbones import training
from backbones.capabilities import FAMILY_CAPABILITIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = frozenset(training.POLICIES) | frozenset(FAMILY_CAPABILITIES)

#: (file, scope) -> why a method or family name belongs there.  The scope is the enclosing class / function
#: (dotted), or the module-level variable assigned.
ALLOWED = {
    # presets: the config's ``type=`` names the preset, which fixes the method (MMSeg / MMDet style)
    ('plugins/mm/detectors.py', 'SlimmableTwoStageDetector.__init__'): 'preset',
    ('plugins/mm/detectors.py', 'RSNetTwoStageDetector.__init__'): 'preset',
    ('plugins/mm/detectors.py', 'SACTTwoStageDetector.__init__'): 'preset',
    ('plugins/mm/segmentors.py', 'SlimmableEncoderDecoder.__init__'): 'preset',
    ('plugins/mm/segmentors.py', 'RSNetEncoderDecoder.__init__'): 'preset',
    ('plugins/mm/segmentors.py', 'SACTEncoderDecoder.__init__'): 'preset',
    # the Detectron2 preset: MODEL.DYNSCALE.SANDWICH / RSNET_TRAIN_MODE / TAU to the method they configure
    ('plugins/detectron2/policy.py', 'build_policy'): 'preset',
    # registered names: one MMEngine backbone type per family (``type='SlimmableNet'``), and their aliases
    ('plugins/mm/backbones.py', 'ElasticBackbone'): 'registration',
    ('plugins/mm/backbones.py', 'SlimmableNet'): 'registration',
    ('plugins/mm/backbones.py', 'SACTResNet'): 'registration',
    ('plugins/mm/backbones.py', 'RSNetBackbone'): 'registration',
    ('plugins/mm/backbones.py', '_ALIAS_OF_FAMILY'): 'registration',
    # the pretraining tool's protocol of each paper's method: its class's ``name`` and the table of them
    ('tools/pretrain_lib/methods.py', 'Method'): 'registration',
    ('tools/pretrain_lib/methods.py', 'SlimmableMethod'): 'registration',
    ('tools/pretrain_lib/methods.py', 'MutualNetMethod'): 'registration',
    ('tools/pretrain_lib/methods.py', 'RSNetMethod'): 'registration',
    ('tools/pretrain_lib/methods.py', 'SACTMethod'): 'registration',
    ('tools/pretrain_lib/methods.py', 'METHOD_CLASSES'): 'registration',
    # presets: the papers' recipes, the authors' evaluation protocol of each release, the benchmark's pairs
    ('tools/pretrain_lib/recipes.py', '_ELASTIC'): 'preset',
    ('tools/pretrain_lib/recipes.py', '_US'): 'preset',
    ('tools/pretrain_lib/recipes.py', '_MUTUAL'): 'preset',
    ('tools/pretrain_lib/recipes.py', '_RS'): 'preset',
    ('tools/pretrain_lib/recipes.py', '_SACT'): 'preset',
    ('tools/pretrain_lib/recipes.py', '_COCO_MULTILABEL'): 'preset',
    ('tools/pretrain_lib/recipes.py', 'RECIPES'): 'preset',
    ('tools/pretrain_lib/pretrained.py', '_METHOD_OF_PROTOCOL'): 'preset',
    ('tools/benchmark.py', 'PAIRS'): 'config',
    # command-line defaults
    ('tools/pretrain.py', 'get_parser'): 'CLI default',
    ('tools/query_table.py', 'parse_args'): 'CLI default',
}


def name_constants(source):
    """``(line, scope, name)`` of every string constant of ``source`` equal to one of ``NAMES``, except inside a
    ``help=`` argument (docstrings and comments never equal a bare name)."""
    found = []

    def visit(node, scope, in_help):
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f'{scope}.{child.name}' if scope else child.name
            elif not scope and isinstance(child, (ast.Assign, ast.AnnAssign)):
                target = child.targets[0] if isinstance(child, ast.Assign) else child.target
                inner = target.id if isinstance(target, ast.Name) else scope
            helps = in_help or (isinstance(child, ast.keyword) and child.arg == 'help')
            if isinstance(child, ast.Constant) and child.value in NAMES and not helps:
                found.append((child.lineno, scope or '<module>', child.value))
            visit(child, inner, helps)
    visit(ast.parse(source), '', False)
    return found


def _scan():
    hits = []
    for top in ('plugins', 'tools'):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith('.py'):
                    path = os.path.join(d, f)
                    with open(path) as fh:
                        rel = os.path.relpath(path, ROOT)
                        hits += [(rel, *h) for h in name_constants(fh.read())]
    return hits


def test_no_method_or_family_name_outside_configs_presets_and_registrations():
    hits = _scan()
    stray = [f'{rel}:{line} in {scope}: {name!r}' for rel, line, scope, name in hits if (rel, scope) not in ALLOWED]
    assert not stray, ('the frontends branch on a method or family name; ask backbones.training (capability_of, '
                       'methods_needing, default_method, the policy) or backbones.capabilities instead, or list a '
                       'preset in ALLOWED:\n' + '\n'.join(stray))
    unused = set(ALLOWED) - {(rel, scope) for rel, _, scope, _ in hits}
    assert not unused, f'ALLOWED lists places that no longer hold a name (remove them): {sorted(unused)}'


@pytest.mark.parametrize('source, expected', [
    ("if method == 'sact':\n    pass\n", [(1, '<module>', 'sact')]),
    ("def f(m):\n    return m in ('usnet', 'x')\n", [(2, 'f', 'usnet')]),
    ("class A:\n    def g(self):\n        return {'rsnet': 1}\n", [(3, 'A.g', 'rsnet')]),
    ("T = dict(method='standard')\n", [(1, 'T', 'standard')]),
    ("p.add_argument('--m', help='elastic')\n", []),
    ('def f():\n    """sact"""\n    # usnet\n    return "a sact model"\n', [(2, 'f', 'sact')]),
], ids=['comparison', 'tuple', 'method', 'module-assignment', 'help', 'docstring-and-text'])
def test_the_scanner_finds_names_where_code_uses_them(source, expected):
    assert name_constants(source) == expected


@pytest.mark.parametrize('name', ['resnext50_elastic', 'us_mobilenet_v2', 'rs_resnet18', 'sact_resnet50'])
def test_default_method_of_a_model_name_is_that_of_the_built_model(name):
    """What the pretraining tool asks for a weights file's model (``--pretrained``): no family table of its own."""
    import backbones
    by_name = training.default_method(name)
    assert by_name == training.default_method(backbones.create(name, num_classes=10))
    assert training.capability_of(by_name) in backbones.capabilities.capabilities(name) | {None}


def test_one_width_switch_behind_the_model_and_both_adapters():
    """``set_width`` is the model's (``DynamicBackbone.set_width``); the MMSeg/MMDet and Detectron2 adapters call it:
    1.0 on an Elastic model changes nothing, 0.5 raises the same OptionNotApplicable naming the slimmable models,
    and a slimmable model switches."""
    import importlib.util

    import backbones
    from backbones.capabilities import OptionNotApplicable
    switches = [('model', lambda name: backbones.create(name, num_classes=0), lambda m: m)]
    if importlib.util.find_spec('mmseg') is not None:
        import plugins.mm  # noqa: F401
        from plugins.mm.backbones import DynscaleBackbone
        switches.append(('mm', lambda name: DynscaleBackbone(arch=name), lambda a: a.model))
    if importlib.util.find_spec('detectron2') is not None:
        from plugins.detectron2.backbone import DynscaleD2Backbone
        switches.append(('detectron2', lambda name: DynscaleD2Backbone(name), lambda a: a.net))
    for where, build, inner in switches:
        elastic = build('resnext50_elastic')
        elastic.set_width(1.0)
        with pytest.raises(OptionNotApplicable, match=r'set_width\(0.5\) does not apply to resnext50_elastic.*slim'):
            elastic.set_width(0.5)
        slim = build('us_mobilenet_v2')
        slim.set_width(0.5)
        assert inner(slim).width == 0.5, where

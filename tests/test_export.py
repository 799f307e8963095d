"""tools/export.py: one configuration of every family to ONNX (checked with ONNX Runtime) and TorchScript,
exact against PyTorch; options a family does not have are refused before anything is read."""
import importlib.util
import os
import shutil
import sys

import pytest
import torch
from conftest import fast_subset

import backbones

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
HAS_ORT = importlib.util.find_spec('onnxruntime') is not None and importlib.util.find_spec('onnx') is not None
needs_ort = pytest.mark.skipif(
    not HAS_ORT, reason='onnx / onnxruntime not installed (the export extra: tools/setup_env.sh installs it)')

# (model, extra flags): one configuration per family, small inputs
CASES = [
    ('us_mobilenet_v2', ['--width', '0.35']),  # random init stores the statistics of 0.35 and 1.0
    ('resnext50_elastic', []),
    ('densenet201_elastic', []),
    ('dla60x_elastic', []),
    ('rs_resnet50', ['--resolution', '128', '--input-size', '64']),
    ('sact_resnet50', []),
]


def _export(tmp_path, name, flags, fmt, *more):
    import export
    suffix = '.onnx' if fmt == 'onnx' else '.pt'
    return export.main([f'--model={name}', '--random-init', '--format', fmt, '--input-size', '64',
                        '--out', str(tmp_path / f'{name}{suffix}'), *flags, *more])


# make test-fast: one slimmable, one Elastic and the RS-Net case; make test: every family
@needs_ort
@pytest.mark.parametrize('name, flags', fast_subset(CASES, ['us_mobilenet_v2', 'resnext50_elastic', 'rs_resnet50'],
                                                    ids=lambda c: c[0]))
def test_onnx_export_matches_pytorch(tmp_path, name, flags):
    torch.manual_seed(0)
    rep = _export(tmp_path, name, flags, 'onnx', '--dynamic-batch')
    assert os.path.getsize(rep['path']) > 10_000
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output'])
    import onnx
    ops = {n.op_type for n in onnx.load(rep['path']).graph.node}
    assert 'Conv' in ops
    if name == 'us_mobilenet_v2':
        assert 'BatchNormalization' not in ops  # every BN follows a convolution: folded into it


@pytest.mark.parametrize('name, flags', fast_subset([CASES[0], CASES[1], CASES[4], CASES[5]], ['us_mobilenet_v2'],
                                                    ids=lambda c: c[0]))
def test_torchscript_export_matches_pytorch(tmp_path, name, flags):
    torch.manual_seed(0)
    rep = _export(tmp_path, name, flags, 'torchscript')
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output'])
    assert isinstance(torch.jit.load(rep['path']), torch.jit.ScriptModule)
    # frozen: every BN that follows a convolution is folded into it (all of them in MobileNet v2 and RS-Net)
    assert rep['batchnorms_left'] < rep['batchnorms']
    if name in ('us_mobilenet_v2', 'rs_resnet50'):
        assert rep['batchnorms_left'] == 0


def test_torchscript_no_freeze_keeps_the_batchnorm_layers(tmp_path):
    torch.manual_seed(0)
    rep = _export(tmp_path, 'rs_resnet50', ['--resolution', '128', '--input-size', '64'], 'torchscript',
                  '--no-freeze')
    assert rep['batchnorms_left'] == rep['batchnorms'] > 50
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output'])


def test_slimmable_export_has_the_width_parameter_count(tmp_path):
    torch.manual_seed(0)
    rep = _export(tmp_path, 'us_mobilenet_v2', ['--width', '0.35'], 'torchscript', '--no-freeze')
    from backbones.complexity import complexity
    full = complexity(backbones.create('us_mobilenet_v2'), input_size=64)
    assert rep['params'] < 0.6 * full['params']  # the static copy holds only the channels of width 0.35
    loaded = torch.jit.load(rep['path'])
    assert sum(p.numel() for p in loaded.parameters()) == rep['params']


@needs_ort
def test_features_export_has_one_output_per_stage(tmp_path):
    torch.manual_seed(0)
    rep = _export(tmp_path, 'resnext50_elastic', ['--features', '--out-indices', '1', '3'], 'onnx')
    import onnxruntime as ort
    sess = ort.InferenceSession(rep['path'], providers=['CPUExecutionProvider'])
    outs = sess.get_outputs()
    assert [o.name for o in outs] == ['stage2', 'stage4']
    res = sess.run(None, {'input': torch.randn(1, 3, 64, 64).numpy()})
    assert [r.shape for r in res] == [(1, 512, 8, 8), (1, 2048, 2, 2)]


def test_checkpoint_without_classifier_exports_features_only(tmp_path):
    """A backbone checkpoint saved without classifier has no logits to export: without ``--features`` the tool
    refuses, naming the flag (it used to export a classifier of random weights); with it, the stage maps."""
    import export

    from backbones.checkpoint import save_backbone_checkpoint
    path = save_backbone_checkpoint(backbones.create('rs_resnet18', num_classes=10), str(tmp_path / 'bb.pth'))
    with pytest.raises(ValueError, match='no classifier.*--features'):
        export.main([path, '--model', 'rs_resnet18', '--format', 'torchscript', '--input-size', '64',
                     '--out', str(tmp_path / 'net.pt')])
    rep = export.main([path, '--model', 'rs_resnet18', '--format', 'torchscript', '--input-size', '64', '--features',
                       '--out-indices', '3', '--out', str(tmp_path / 'net.pt')])
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output'])


def test_sact_dense_export_keeps_every_unit(tmp_path):
    """A traced SACT graph must not bake in where the example input halted: with every position halting after
    the first unit of each stage on the example, another input (not halting) still gets the exact result."""
    import export
    model = backbones.create('sact_resnet50').eval()
    model.execution = 'dense'
    model.set_halting_bias(10.0)  # every position halts after the first unit of each stage
    wrapper = export.ExportWrapper(model).eval()
    path = str(tmp_path / 'sact.pt')
    export.export(wrapper, torch.randn(1, 3, 64, 64), path, 'torchscript')
    model.set_halting_bias(-3.0)  # now positions run several units
    traced = torch.jit.load(path)
    traced.load_state_dict(wrapper.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), wrapper(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('flags, expect', [
    (['--model', 'resnext50_elastic', '--width', '0.5'], '--width'),
    (['--model', 'sact_resnet50', '--width', '0.5'], 'slimmable'),
])
def test_options_the_family_lacks_are_refused_before_reading(tmp_path, flags, expect):
    import export

    from backbones.capabilities import OptionNotApplicable
    ckpt = tmp_path / 'not_a_checkpoint.pth'
    ckpt.write_text('text')
    with pytest.raises(OptionNotApplicable, match=expect):
        export.parse_args([str(ckpt), '--format', 'onnx', *flags])


# ------------------------------------------------------------------------------------ checkpoints trained here
#: (model, pretraining method, extra pretrain flags, export flags): every family (tests/test_query_table.py also
#: exports its own MutualNet-trained US-MobileNet v2)
TRAINED = [
    ('us_mobilenet_v2', 'mutualnet', ['--widths', '0.35', '1.0', '--input-sizes', '32', '--eval-widths', '1.0',
                                      '--calib-batches', '1'], ['--width', '1.0']),
    ('resnext50_elastic', 'standard', [], []),
    ('densenet201_elastic', 'standard', [], []),
    ('dla60x_elastic', 'standard', [], []),
    ('rs_resnet18', 'rsnet', ['--bn-resolutions', '48', '32'], ['--resolution', '32']),
    ('sact_resnet50', 'sact', ['--tau', '0.01'], []),
]


@pytest.fixture(scope='module')
def imagenette_trained(tmp_path_factory, shared_dir):
    """model -> ``backbone.pth`` of a run of tools/pretrain.py on the shared Imagenette subset (one step of 4
    images at 32x32: the weights and BN statistics are those of a trained file, not of the initialisation).  The
    gradient norm is clipped: a randomly initialised DLA with 10 classes starts at a loss of 13-18 (its classifier
    is initialised with std sqrt(2 / num_classes), the authors' fan-out rule) and one unclipped step at lr 0.05
    drives its BN scales into the thousands, so that eval-mode outputs overflow."""
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isfile(os.path.join(root, 'classes.txt')):
        pytest.skip(f'Imagenette missing: expected {root}/classes.txt')
    import pretrain
    done = {}

    def get(name, method, flags):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            pretrain.main(['--data-path', root, '--output-dir', str(out), '--model', name, '--method', method,
                           '--epochs', '1', '--batch-size', '4', '--max-train-samples', '4', '--max-val-samples',
                           '4', '--train-crop-size', '32', '--val-resize-size', '36', '--val-crop-size', '32',
                           '--workers', '0', '--lr', '0.05', '--clip-grad-norm', '1.0', '--no-tensorboard',
                           '--no-final-eval', *flags])
            for f in ('last.pth', 'best.pth'):  # training checkpoints (~2x the backbone): only backbone.pth is used
                (out / f).unlink(missing_ok=True)
            done[name] = str(out / 'backbone.pth')
        return done[name]
    yield get
    for path in done.values():  # module-scoped: pytest would keep them to the end of the session
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
@pytest.mark.parametrize('name, method, flags, export_flags', TRAINED, ids=[t[0] for t in TRAINED])
def test_export_of_a_checkpoint_trained_on_imagenette(imagenette_trained, tmp_path, name, method, flags,
                                                      export_flags, fmt):
    """tools/export.py on the file tools/pretrain.py wrote: ONNX Runtime / TorchScript reproduce PyTorch (within
    1e-4 relative plus the float32 rounding of PyTorch itself, which a one-step network with tiny BN variances
    shows), and the parameter count is that of the configuration."""
    import export

    from backbones.complexity import complexity
    ckpt = imagenette_trained(name, method, flags)
    rep = export.main([ckpt, '--model', name, '--format', fmt, '--input-size', '32', '--dynamic-batch',
                       '--out', str(tmp_path / f'net.{fmt}'), *export_flags])
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output']) + 4 * rep['float32_error']
    assert rep['batchnorms_left'] < rep['batchnorms']  # folded where a BN follows a convolution
    model = backbones.create(name, pretrained=ckpt).eval()
    kw = {'resolution': 32} if name.startswith('rs_') else {'width': 1.0} if name.startswith('us_') else {}
    batch = torch.randn(1, 3, 32, 32) if name.startswith('sact_') else None
    assert rep['params'] == complexity(model, 32, batch=batch, **kw)['params']


@pytest.mark.slow
@pytest.mark.parametrize('official, name, flags', [
    ('parallel_resnet18', 'rs_resnet18', ['--resolution', '160', '--input-size', '64']),
    ('us_mobilenet_v2', 'us_mobilenet_v2', ['--width', '0.5', '--input-size', '64']),
], ids=['rsnets', 'usnets'])
def test_export_of_an_official_release_file(tmp_path, official, name, flags):
    """A file in the authors' own container (RS-Nets ``parallel_resnet18``, US-Nets ``us_mobilenet_v2``) exports
    directly: its private BN of 160 px / its stored statistics of width 0.5."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from official_files import MANIFEST_DIR, write_official
    if not os.path.isdir(MANIFEST_DIR):
        pytest.skip(f'the official checkpoint manifests are missing: {MANIFEST_DIR}')
    path = write_official(official, str(tmp_path / f'{official}.pth.tar'))[0]
    import export
    rep = export.main([path, '--model', name, '--format', 'torchscript', '--out', str(tmp_path / 'net.pt'), *flags])
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output']) + 4 * rep['float32_error']
    assert rep['batchnorms_left'] == 0  # every BN of these networks follows a convolution

"""Bad inputs a new user tries get one error naming the cause and the fix (issue 23).

Each case builds what a user would pass and asserts the exception type (Python API) or a non-zero exit status
(tools: every case through the script's own ``__main__`` block in-process, ``conftest.run_tool``, and the first
case of each tool again as a new process like a user runs it, marked slow) and the words of the message that name
the cause and the fix (not a deep framework frame, a bare KeyError or a dtype error from inside a convolution).
Groups: the Python API, disk full while writing a checkpoint, and the tools: pretraining, MMSeg / MMDet,
Detectron2, the converter and the exporter."""
import errno
import importlib.util
import os
import shutil
import sys
import zipfile

import pytest
import torch
from conftest import run_tool

import backbones
from backbones.capabilities import OptionNotApplicable
from backbones.checkpoint import CheckpointMismatchError, CheckpointWriteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('DYNSCALE_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))


@pytest.fixture(scope='module')
def elastic():
    return backbones.create('resnext50_elastic', num_classes=10)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('files')
    (d / 'text.pth').write_text('hello, not a checkpoint\n')
    (d / 'page.pth').write_text('<!DOCTYPE html><html>Google Drive - virus scan warning</html>')
    (d / 'empty.pth').write_bytes(b'')
    with zipfile.ZipFile(d / 'two.zip', 'w') as z:
        z.writestr('a.pth', b'x')
        z.writestr('b.pth', b'y')
    torch.save(backbones.create('resnext50_elastic', num_classes=10).state_dict(), d / 'ten.pth')
    data = (d / 'ten.pth').read_bytes()
    (d / 'half.pth').write_bytes(data[:len(data) // 2])
    (d / 'folder').mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


def _x(*shape, **kw):
    return torch.randn(*shape, **kw)


API_CASES = {
    # input tensors
    'grayscale input': (lambda m, f: m.eval()(_x(1, 1, 64, 64)), ValueError, ['[N, 3, H, W]', 'convert grayscale']),
    'image without batch dim': (lambda m, f: m.eval()(_x(3, 64, 64)), ValueError, ['[N, 3, H, W]']),
    'uint8 images': (lambda m, f: m.eval()(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), TypeError,
                     ['uint8', 'x.float() / 255', 'pixel_mean']),
    'float64 input': (lambda m, f: m.eval()(_x(1, 3, 64, 64, dtype=torch.float64)), TypeError,
                      ['float64', 'x.to(torch.float32)', 'model.to(torch.float64)']),
    'a list of images': (lambda m, f: m.eval()([_x(3, 64, 64)]), TypeError, ['torch.stack']),
    'batch of one in training': (lambda m, f: m.train()(_x(1, 3, 32, 32)), ValueError,
                                 ['batch of 1', 'batch of >= 2', 'model.eval()', 'norm_eval=True']),
    # switches a family does not have
    'set_width on Elastic': (lambda m, f: m.set_width(0.5), OptionNotApplicable, ['set_width(0.5)', 'slimmable']),
    'set_resolution on Elastic': (lambda m, f: m.set_resolution(160), OptionNotApplicable,
                                  ['set_resolution(160)', 'rsnet']),
    'width outside the range': (lambda m, f: backbones.create('us_mobilenet_v2').set_width(1.5), ValueError,
                                ['1.5', 'choose a width in [0.35, 1.0]']),
    'width range above 1.0': (lambda m, f: backbones.create('us_mobilenet_v2', width_range=(0.1, 1.5)), ValueError,
                              ['above 1.0', 'w_max <= 1.0']),
    'untrained RS-Net resolution': (lambda m, f: backbones.create('rs_resnet50').set_resolution(100), ValueError,
                                    ['100', 'choose one of']),
    'halting bias as text': (lambda m, f: backbones.create('sact_resnet50').set_halting_bias('high'), TypeError,
                             ['halting bias is a number']),
    'halting bias on a dense model': (lambda m, f: backbones.create('preact_resnet50').set_halting_bias(1.0),
                                      ValueError, ['no halting branches', 'sact_']),
    # building
    'typo in the model name': (lambda m, f: backbones.create('resnext50_elastc'), ValueError,
                               ['unknown backbone', 'resnext50_elastic']),
    'typo in an argument': (lambda m, f: backbones.create('resnext50_elastic', num_clases=10), ValueError,
                            ["'num_clases'", 'num_classes']),
    'unsupported output stride': (lambda m, f: backbones.create('resnext50_elastic', output_stride=12), ValueError,
                                  ['32, 16 or 8', '12']),
    'out_indices outside 0..3': (lambda m, f: backbones.create('resnext50_elastic', out_indices=(4,)), ValueError,
                                 ['out_indices', '0..3']),
    # checkpoints
    'checkpoint path missing': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'nope.pth')),
                                FileNotFoundError, ['not found', 'nope.pth']),
    'text file as checkpoint': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'text.pth')),
                                CheckpointMismatchError, ['text.pth', 'a text file', 'download it again']),
    'web page as checkpoint': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'page.pth')),
                               CheckpointMismatchError, ['HTML', 'web page']),
    'empty file as checkpoint': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'empty.pth')),
                                 CheckpointMismatchError, ['empty']),
    'truncated checkpoint': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'half.pth')),
                             CheckpointMismatchError, ['half.pth', 'truncated', 'again']),
    'zip with two checkpoints': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'two.zip')),
                                 CheckpointMismatchError, ['zip archive', 'unzip it']),
    'folder as checkpoint': (lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'folder')),
                             CheckpointMismatchError, ['folder', 'checkpoint file inside']),
    'class count differs from the head': (
        lambda m, f: backbones.create('resnext50_elastic', pretrained=str(f / 'ten.pth'), num_classes=1000),
        CheckpointMismatchError, ['num_classes=10', 'drop_head=True']),
    'checkpoint of another model': (
        lambda m, f: backbones.create('resnext101_elastic', pretrained=str(f / 'ten.pth')),
        CheckpointMismatchError, ['resnext50_elastic']),
    # more inputs
    'input smaller than the total stride': (lambda m, f: m.eval()(_x(1, 3, 16, 16)), ValueError,
                                            ['(16, 16)', 'total stride 32', 'at least 32x32']),
    'five-dimensional input': (lambda m, f: m.eval()(_x(1, 1, 3, 64, 64)), ValueError, ['[N, 3, H, W]']),
    'a numpy array': (lambda m, f: m.eval()(_x(1, 3, 64, 64).numpy()), TypeError, ['ndarray', 'torch.from_numpy']),
    # more switches and arguments
    'width as a string': (lambda m, f: backbones.create('us_mobilenet_v2').set_width('0.5'), TypeError,
                          ["'0.5'", "set_width(float('0.5'))"]),
    'NaN halting bias': (lambda m, f: backbones.create('sact_resnet50').set_halting_bias(float('nan')), ValueError,
                         ['finite', '-3.0']),
    'width range reversed': (lambda m, f: backbones.create('us_mobilenet_v2', width_range=(1.0, 0.35)), ValueError,
                             ['w_min <= w_max', '(1.0, 0.35)']),
    'out_indices as an int': (lambda m, f: backbones.create('resnext50_elastic', out_indices=3), TypeError,
                              ['out_indices=(3,)']),
    'frozen_stages out of range': (lambda m, f: backbones.create('resnext50_elastic', frozen_stages=7), ValueError,
                                   ['-1..4', '7']),
    'class count as a string': (lambda m, f: backbones.create('resnext50_elastic', num_classes='10'), TypeError,
                                ['num_classes=10']),
    'negative class count': (lambda m, f: backbones.create('resnext50_elastic', num_classes=-1), ValueError,
                             ['>= 0', 'features only']),
    'class count given positionally': (lambda m, f: backbones.create('resnext50_elastic', 10), TypeError,
                                       ['pretrained is a checkpoint path', 'did you mean num_classes=10']),
    'pretrained=True as in timm': (lambda m, f: backbones.create('resnext50_elastic', pretrained=True), TypeError,
                                   ['downloads no weights', 'MODEL_ZOO.md', 'None for random']),
    'pretrained as an empty path': (lambda m, f: backbones.create('resnext50_elastic', pretrained=''), ValueError,
                                    ['empty path', 'None for random']),
    'output stride as a string': (lambda m, f: backbones.create('resnext50_elastic', output_stride='16'), ValueError,
                                  ["got '16'", '32, 16 or 8']),
    'model name missing': (lambda m, f: backbones.create(None), TypeError, ['registered name', 'list_models()']),
}


@pytest.mark.parametrize('case', list(API_CASES))
def test_python_api_bad_input_names_cause_and_fix(case, elastic, files):
    fn, exc, words = API_CASES[case]
    with pytest.raises(exc) as info:
        fn(elastic, files)
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f'{case}: message lacks {missing}: {msg}'


# --------------------------------------------------------------------------------- disk full while saving
class _FullDisk:
    """A file object whose writes fail like a full disk (ENOSPC)."""

    def __init__(self, fd, *a, **kw):
        os.close(fd)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _write_on_full_disk(writer, path, monkeypatch):
    monkeypatch.setattr(os, 'fdopen', _FullDisk)
    with pytest.raises(CheckpointWriteError) as info:
        writer()
    monkeypatch.undo()
    return str(info.value)


@pytest.mark.parametrize('writer', ['atomic_save', 'mm_backend', 'detectron2_checkpointer'])
def test_disk_full_names_path_and_space_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, writer):
    from backbones.checkpoint import atomic_save
    path = tmp_path / ('model_0000001.pth' if writer == 'detectron2_checkpointer' else 'last.pth')
    before = {'model': {'w': torch.ones(3)}}
    atomic_save(before, path)
    state = {'model': {'w': torch.zeros(200_000)}}
    if writer == 'atomic_save':
        msg = _write_on_full_disk(lambda: atomic_save(state, path), path, monkeypatch)
    elif writer == 'mm_backend':
        if importlib.util.find_spec('mmengine') is None:
            pytest.skip('mmengine not installed (tools/setup_env.sh installs it)')
        import io

        from plugins.mm.file_backend import AtomicLocalBackend
        buf = io.BytesIO()
        torch.save(state, buf)
        msg = _write_on_full_disk(lambda: AtomicLocalBackend().put(buf.getvalue(), str(path)), path, monkeypatch)
    else:
        if importlib.util.find_spec('detectron2') is None:
            pytest.skip('detectron2 not installed (build it from its public source, see README)')
        from plugins.detectron2 import DynscaleCheckpointer
        ckpt = DynscaleCheckpointer(torch.nn.Linear(400, 500), save_dir=str(tmp_path))
        msg = _write_on_full_disk(lambda: ckpt.save('model_0000001'), path, monkeypatch)
    assert str(path) in msg and 'MiB needed' in msg and 'MiB free' in msg and 'free some space' in msg, msg
    assert 'previous checkpoint at this path is intact' in msg
    assert torch.equal(torch.load(path)['model']['w'], torch.ones(3))  # the previous file is untouched
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]  # no partial file left


# ------------------------------------------------------------------------------------------------ the tools
HAS_MMSEG = importlib.util.find_spec('mmseg') is not None
HAS_MMDET = importlib.util.find_spec('mmdet') is not None
HAS_D2 = importlib.util.find_spec('detectron2') is not None
IMAGENETTE = os.path.join(SHARED, 'datasets', 'imagenette')
SEG = 'seg_configs/deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py'
DET = 'det_configs/mmdet/elastic/mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py'
D2 = 'det_configs/detectron2/mask_rcnn_resnext50_elastic_FPN_1x.yaml'
PRETRAIN = ['tools/pretrain.py', '--data-path', IMAGENETTE, '--model', 'us_mobilenet_v2', '--workers', '0',
            '--no-tensorboard', '--epochs', '1', '--batch-size', '4', '--train-crop-size', '32',
            '--val-resize-size', '36', '--val-crop-size', '32', '--max-train-samples', '8', '--max-val-samples', '8',
            '--no-final-eval']
_D2 = ['tools/train_det.py', '--config-file', D2, '--eval-only', 'MODEL.DEVICE', 'cpu', 'OUTPUT_DIR', '{tmp}/d2',
       'MODEL.WEIGHTS', '']


@pytest.fixture(scope='module')
def tool_files(tmp_path_factory):
    """Files a user passes by mistake: text, random bytes, a truncated checkpoint, an exported backbone, image
    folders without classes or without images."""
    d = tmp_path_factory.mktemp('tool_files')
    (d / 'text.pth').write_text('hello, not a checkpoint\n')
    (d / 'junk.pth').write_bytes(bytes(range(256)) * 400)
    from backbones.checkpoint import save_backbone_checkpoint
    save_backbone_checkpoint(backbones.create('resnext50_elastic'), d / 'backbone.pth')
    data = (d / 'backbone.pth').read_bytes()
    (d / 'half.pth').write_bytes(data[:len(data) // 2])
    import pickle
    with open(d / 'detector_d2.pkl', 'wb') as fh:  # detectron2's own format: a pickle of numpy arrays
        pickle.dump({'model': {'backbone.bottom_up.net.' + k: v.numpy() for k, v in
                               torch.load(d / 'backbone.pth')['state_dict'].items()}, '__author__': 'dynscale'}, fh)
    for sub in ('noclass/train', 'noclass/val', 'noimage/train/cat', 'noimage/val/cat'):
        (d / sub).mkdir(parents=True)
    (d / 'noimage/train/cat/readme.txt').write_text('no images here')
    # runs whose latest checkpoint was cut short (a crash or a full disk while another tool wrote it)
    for run, name, tag in (('d2run', 'model_0000009.pth', 'last_checkpoint'), ('prun', 'last.pth', None),
                           ('mmrun', 'iter_9.pth', 'last_checkpoint')):
        (d / run).mkdir()
        (d / run / name).write_bytes(data[:len(data) // 2])
        if tag:
            (d / run / tag).write_text(name if run == 'd2run' else str(d / run / name))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _p(*parts):
    return list(parts)


#: case -> (needs, argv (``{f}``: tool_files, ``{tmp}``: the test's tmp_path), words the message must hold)
TOOL_CASES = {
    # pretraining tool
    'pretrain: data folder missing': ('', _p(*PRETRAIN[:2], '{f}/nowhere', *PRETRAIN[3:]),
                                      ['{f}/nowhere/train not found', 'train/<class>/']),
    'pretrain: data folder without class folders': ('', _p(*PRETRAIN[:2], '{f}/noclass', *PRETRAIN[3:]),
                                                    ['class folder', 'ImageFolder root']),
    'pretrain: class folder without images': ('', _p(*PRETRAIN[:2], '{f}/noimage', *PRETRAIN[3:]),
                                              ['no valid file', 'Supported extensions', 'ImageFolder root']),
    'pretrain: --widths above 1.0': ('imagenette', _p(*PRETRAIN, '--widths', '0.1', '1.5'),
                                     ['above 1.0', 'w_max <= 1.0']),
    'pretrain: --resume a text file': ('imagenette', _p(*PRETRAIN, '--resume', '{f}/text.pth'),
                                       ['{f}/text.pth', 'a text file', 'best.pth']),
    'pretrain: --resume a missing file': ('imagenette', _p(*PRETRAIN, '--resume', '{f}/nope.pth'),
                                          ['no such checkpoint file', '--resume auto']),
    'pretrain: --resume an exported backbone': ('imagenette', _p(*PRETRAIN, '--resume', '{f}/backbone.pth'),
                                                ['not a pretrain.py training checkpoint', '--init-checkpoint']),
    'pretrain: --pretrained random bytes': ('imagenette', _p(*PRETRAIN, '--pretrained', '{f}/junk.pth'),
                                            ['not a torch checkpoint', 'download it again']),
    'pretrain: misspelt --model': ('imagenette', _p(*PRETRAIN, '--model', 'us_mobilenet_v3'),
                                   ['unknown backbone', 'us_mobilenet_v2']),
    'pretrain: misspelt --recipe': ('imagenette', _p(*PRETRAIN, '--recipe', 'mutualnet-mobilenetv3'),
                                    ['unknown recipe', 'mutualnet-mobilenetv2']),
    'pretrain: --resume auto finds a truncated last.pth': (
        'imagenette', _p(*PRETRAIN, '--output-dir', '{f}/prun', '--resume', 'auto'),
        ['{f}/prun/last.pth', 'truncated', 'best.pth']),
    'pretrain: disk full at the first checkpoint': ('imagenette fsize', _p(*PRETRAIN, '--output-dir', '{tmp}/run'),
                                                    ['cannot write checkpoint {tmp}/run/last.pth', 'MiB',
                                                     'ulimit -f unlimited', 'no partial file']),
    # OpenMMLab tools
    'mmseg: misspelt backbone type': ('mmseg', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w',
                                                  '--cfg-options', 'model.backbone.type=ElasticResNext'),
                                      ["'ElasticResNext' is not registered", "did you mean 'ElasticBackbone'"]),
    'mmseg: dataset folder missing': ('mmseg', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w',
                                                  '--data-root', '{tmp}/nodata'),
                                      ['VOCdevkit', '--data-root']),
    'mmseg: --resume a text file': ('mmseg', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w', '--resume',
                                                '{f}/text.pth'),
                                    ['{f}/text.pth', 'a text file', 'iter_N.pth']),
    'mmseg: load_from random bytes': ('mmseg', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w',
                                                  '--cfg-options', 'load_from={f}/junk.pth'),
                                      ['not a torch checkpoint', 'set load_from']),
    'mmseg: test a backbone checkpoint': ('mmseg', _p('tools/test_seg.py', SEG, '{f}/backbone.pth', '--work-dir',
                                                      '{tmp}/w'),
                                          ['dynscale backbone checkpoint', 'init_cfg.checkpoint={f}/backbone.pth']),
    'mmseg: --resume finds a truncated latest checkpoint': (
        'mmseg', _p('tools/train_seg.py', SEG, '--work-dir', '{f}/mmrun', '--resume'),
        ['{f}/mmrun/iter_9.pth', 'truncated', 'iter_N.pth']),
    'mmseg: --amp on a machine without a GPU': (
        'mmseg nocuda', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w', '--amp'),
        ['--amp', 'needs a GPU', 'drop --amp']),
    'mmseg: --launcher pytorch without torchrun': (
        'mmseg nocuda', _p('tools/train_seg.py', SEG, '--work-dir', '{tmp}/w', '--launcher', 'pytorch'),
        ['torchrun --nproc_per_node N', 'drop --launcher']),
    'mmdet: misspelt neck type': ('mmdet', _p('tools/train_det_mm.py', DET, '--work-dir', '{tmp}/w',
                                              '--cfg-options', 'model.neck.type=FPNN'),
                                  ["'FPNN' is not registered", "'FPN'"]),
    'mmdet: test a detectron2 checkpoint': ('mmdet', _p('tools/test_det_mm.py', DET, '{f}/detector_d2.pkl',
                                                        '--work-dir', '{tmp}/w'),
                                            ['Detectron2', 'not an MMEngine checkpoint',
                                             'init_cfg.checkpoint={f}/detector_d2.pkl']),
    'detectron2: MODEL.WEIGHTS a text file': ('d2', _p(*_D2, 'MODEL.WEIGHTS', '{f}/text.pth'),
                                              ['{f}/text.pth', 'a text file']),
    'detectron2: MODEL.WEIGHTS an unconverted backbone': ('d2', _p(*_D2, 'MODEL.WEIGHTS', '{f}/backbone.pth'),
                                                          ['not a detectron2 checkpoint',
                                                           'tools/convert_weights.py {f}/backbone.pth',
                                                           '--to detectron2']),
    'detectron2: MODEL.WEIGHTS missing': ('d2', _p(*_D2, 'MODEL.WEIGHTS', '{f}/nope.pkl'),
                                          ['not found', 'convert_weights.py']),
    'detectron2: --resume finds a truncated checkpoint': (
        'd2', _p('tools/train_det.py', '--config-file', D2, '--resume', 'MODEL.DEVICE', 'cpu', 'OUTPUT_DIR',
                 '{f}/d2run', 'MODEL.WEIGHTS', ''),
        ['{f}/d2run/model_0000009.pth', 'truncated', 'last_checkpoint']),
    'detectron2: misspelt key': ('d2', _p(*_D2, 'MODEL.DYNSCALE.WIDHT', '0.5'),
                                 ['MODEL.DYNSCALE.WIDHT', 'did you mean MODEL.DYNSCALE.WIDTH']),
    'detectron2: misspelt backbone name': ('d2', _p(*_D2, 'MODEL.BACKBONE.NAME', 'build_elastc_fpn_backbone'),
                                           ['is not a registered detectron2 backbone', 'build_elastic_fpn_backbone']),
    # converter and exporter
    'convert: a text file': ('', _p('tools/convert_weights.py', '{f}/text.pth', '{tmp}/out.pth'),
                             ['{f}/text.pth', 'a text file']),
    'convert: source missing': ('', _p('tools/convert_weights.py', '{f}/nope.pth', '{tmp}/out.pth'),
                                ['not found', '{f}/nope.pth']),
    'convert: the former --resolutions': ('', _p('tools/convert_weights.py', '{f}/text.pth', '{tmp}/out.pth',
                                                 '--resolutions', '224', '160'),
                                          ['--resolutions is now --bn-resolutions', 'private-BN resolutions']),
    'export: --width on Elastic': ('', _p('tools/export.py', '{f}/backbone.pth', '--model', 'resnext50_elastic',
                                          '--width', '0.5', '--format', 'onnx', '--out', '{tmp}/x.onnx'),
                                   ['--width', 'slimmable', 'remove --width']),
    'export: input below the total stride': ('', _p('tools/export.py', '--random-init', '--model', 'us_mobilenet_v2',
                                                    '--input-size', '16', '--format', 'onnx', '--out',
                                                    '{tmp}/x.onnx'),
                                             ['total stride 32', 'at least 32x32']),
    'export: checkpoint of another model': ('', _p('tools/export.py', '{f}/backbone.pth', '--model',
                                                   'us_mobilenet_v2', '--format', 'onnx', '--out', '{tmp}/x.onnx'),
                                            ["'resnext50_elastic' checkpoint"]),
}


#: the first case of each tool: also run as a real ``python tools/X.py`` process (the test after the next)
_SUBPROCESS_CASES = sorted({next(c for c, (_, argv, _) in TOOL_CASES.items() if argv[0] == tool)
                            for tool in {argv[0] for _, argv, _ in TOOL_CASES.values()}})
#: needs a new process (a file size limit), so it is slow like the process runs
_PROCESS_ONLY = [c for c, (needs, _, _) in TOOL_CASES.items() if 'fsize' in needs]


def _check_tool_case(case, tool_files, tmp_path, subprocess_run):
    needs, argv, words = TOOL_CASES[case]
    if 'mmseg' in needs and not HAS_MMSEG:
        pytest.skip('mmsegmentation not installed (tools/setup_env.sh installs it)')
    if 'mmdet' in needs and not HAS_MMDET:
        pytest.skip('mmdetection not installed (tools/setup_env.sh installs it)')
    if 'd2' in needs and not HAS_D2:
        pytest.skip('detectron2 not installed (build it from its public source, see README)')
    if 'nocuda' in needs and torch.cuda.is_available():
        pytest.skip('the case is about a machine without a GPU')
    if 'imagenette' in needs and not os.path.isdir(IMAGENETTE):
        pytest.skip(f'the shared Imagenette subset is missing: expected {IMAGENETTE}')
    fill = {'f': str(tool_files), 'tmp': str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    words = [w.format(**fill) for w in words]
    if 'fsize' in needs:  # a 4 MiB file size limit: the checkpoint write fails as on a full disk (EFBIG)
        r = run_tool(['bash', '-c', 'ulimit -f 4096 && exec "$@"', 'bash', sys.executable, *argv], program=True)
    else:  # in this process through the script's own __main__ block, or as a new process
        r = run_tool(argv, subprocess_run=subprocess_run)
    err = r.stderr
    assert r.returncode != 0, f'{case}: exit status 0\n{r.stdout[-2000:]}{err[-2000:]}'
    missing = [w for w in words if w not in err]
    assert not missing, f'{case}: stderr lacks {missing}:\n{err[-3000:]}'
    assert 'Traceback' not in err, f'{case}: a traceback instead of one message:\n{err[-3000:]}'


@pytest.mark.parametrize('case', [c if c not in _PROCESS_ONLY else pytest.param(c, marks=pytest.mark.slow)
                                  for c in TOOL_CASES])
def test_tool_bad_input_exits_nonzero_naming_cause_and_fix(case, tool_files, tmp_path):
    """Every case through the tool's ``__main__`` block in this process (what a new process runs)."""
    _check_tool_case(case, tool_files, tmp_path, subprocess_run=False)


@pytest.mark.slow
@pytest.mark.parametrize('case', _SUBPROCESS_CASES)
def test_tool_bad_input_as_a_new_process(case, tool_files, tmp_path):
    """The first case of each tool as the command line a user types: a new ``python tools/X.py`` process."""
    _check_tool_case(case, tool_files, tmp_path, subprocess_run=True)

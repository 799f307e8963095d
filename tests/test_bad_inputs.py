"""Bad inputs a new user tries get one error naming the cause and the fix (issue 23, first group: the Python API).

Each case builds what a user would pass and asserts the exception type and the words of the message that name the
cause and the fix (not a deep framework frame, a bare KeyError or a dtype error from inside a convolution)."""
import zipfile

import pytest
import torch

import backbones
from backbones.capabilities import OptionNotApplicable
from backbones.checkpoint import CheckpointMismatchError


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
    return d


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
}


@pytest.mark.parametrize('case', list(API_CASES))
def test_python_api_bad_input_names_cause_and_fix(case, elastic, files):
    fn, exc, words = API_CASES[case]
    with pytest.raises(exc) as info:
        fn(elastic, files)
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f'{case}: message lacks {missing}: {msg}'

"""The model zoo: every released ImageNet file that maps onto a dynscale backbone.

One :class:`ZooEntry` per (dynscale model, weights): where the authors publish the file, the top-1 their
README or paper states for exactly that release, and the converted file the 1x configs expect
(``checkpoints/<model>_<tag>.pth``; Detectron2 configs expect ``checkpoints/d2/<model>_<tag>_<fpn|c4>.pkl``).
``MODEL_ZOO.md`` is rendered from this table (``python tools/convert_weights.py --zoo-markdown``), and a
config whose checkpoint is missing prints the convert command of its row (:func:`missing_file_message`).

Sources of the numbers: Elastic paper Table 2 (ImageNet top-1 = 100 - error of the "*" and "+Elastic" rows, which
the README says are the released models; none for DLA-X102, whose Table 2 row is the DLA paper's);
slimmable_networks README model zoo (US-Nets per-width error); MutualNet README query tables; RS-Nets README
per-resolution table; torchvision 0.28 weight enums (``IMAGENET1K_V1``); timm 1.0 ``results-imagenet.csv`` / model
cards.
"""
import os
import posixpath
from dataclasses import dataclass, field

__all__ = ['ZooEntry', 'ZOO', 'zoo_entry', 'entry_for_file', 'missing_file_message', 'convert_command']

CHECKPOINT_DIR = 'checkpoints'


@dataclass(frozen=True)
class ZooEntry:
    """One row of the model zoo.

    Attributes:
        model (str): dynscale model name.
        tag (str): weights tag (``elastic_in1k``, ``usnet_in1k``, ``tv_in1k`` ...).
        origin (str): origin repository / library.
        release (str): the official name of the weights.
        url (str): public download location as the origin gives it.
        download_name (str): file name of the download (the convert command's input).
        top1 (dict): accuracy the origin states: ``{'224': 78.44}`` or ``{'w1.0': 71.8, ...}`` /
            ``{'w1.0-r224': 72.4}``; empty when none is published.
        top1_source (str): where the number comes from.
        source (str | None): ``--source`` needed by the converter (None: detected).
        note (str): anything a user must know (licence, uncalibrated widths, new halting branches).
        convert_args (tuple[str]): extra converter flags.
    """

    model: str
    tag: str
    origin: str
    release: str
    url: str
    download_name: str
    top1: dict = field(default_factory=dict)
    top1_source: str = ''
    source: str = None
    note: str = ''
    convert_args: tuple = ()

    @property
    def key(self):
        """``<model>.<tag>`` (as timm's pretrained tags)."""
        return f'{self.model}.{self.tag}'

    @property
    def converted(self):
        """Path (relative to the repository) of the converted dynscale checkpoint the configs expect."""
        return posixpath.join(CHECKPOINT_DIR, f'{self.model}_{self.tag}.pth')

    def d2_converted(self, layout='fpn'):
        """Path of the Detectron2 checkpoint for a detector layout (``'fpn'`` or ``'c4'``)."""
        return posixpath.join(CHECKPOINT_DIR, 'd2', f'{self.model}_{self.tag}_{layout}.pkl')

    def headline_top1(self):
        """The first published top-1 (full width / largest resolution), or None."""
        return next(iter(self.top1.values()), None)


def _rows():
    E = 'allenai/elastic'
    s3 = 'http://ai2-vision.s3.amazonaws.com/elastic/imagenet_models/{}.pth.tar'
    paper = 'Elastic paper Table 2 (100 - top-1 error; README: released files are the evaluated models)'
    unused = ('the converter drops the {} tensors of the projections the authors\' DLA Tree computes but never uses '
              '(listed in its summary; parameters here are without them)')
    notes = {'dla60x': unused.format(18), 'dla60x_elastic': unused.format(18)}
    rows = [ZooEntry(m, 'elastic_in1k', E, r, s3.format(r), f'{r}.pth.tar', {'224': t}, paper, note=notes.get(m, ''))
            for m, r, t in [('resnext50_32x4d', 'resnext50', 77.77), ('resnext50_elastic', 'resnext50_elastic', 78.44),
                            ('resnext101_32x4d', 'resnext101', 78.82),
                            ('resnext101_elastic', 'resnext101_elastic', 79.17),
                            ('se_resnext50_elastic', 'se_resnext50_elastic', 78.62),
                            ('densenet201', 'densenet201', 77.75),
                            ('densenet201_elastic', 'densenet201_elastic', 77.93),
                            ('dla60x', 'dla60x', 78.08), ('dla60x_elastic', 'dla60x_elastic', 78.75)]]
    # Table 2 has no "*" (authors' own) row for DLA-X102: its 21.5 error is the DLA paper's figure, so no top-1 is
    # claimed for this release.  dla102x_elastic has no ImageNet release (converter support only).
    rows.append(ZooEntry('dla102x', 'elastic_in1k', E, 'dla102x', s3.format('dla102x'), 'dla102x.pth.tar', {}, '',
                         note='the Elastic paper reports no accuracy of the authors\' own DLA-X102 (Table 2 quotes '
                              'the DLA paper\'s 21.5% top-1 error for its row without "*"); ' + unused.format(30)))
    us = 'JiahuiYu/slimmable_networks'
    v1 = {'w1.0': 71.8, 'w0.75': 69.5, 'w0.5': 64.2, 'w0.25': 55.7}
    v2 = {'w1.0': 71.5, 'w0.75': 69.6, 'w0.5': 65.1, 'w0.35': 62.3}
    readme = 'slimmable_networks README (100 - top-1 error per width, stored per-width statistics)'
    rows += [
        ZooEntry('us_mobilenet_v1', 'usnet_in1k', us, 'us_mobilenet_v1_calibrated',
                 'https://github.com/JiahuiYu/slimmable_networks/files/2979952/us_mobilenet_v1_calibrated.pt.zip',
                 'us_mobilenet_v1_calibrated.pt.zip', v1, readme, note='31 widths 0.25..1.0 with stored statistics; '
                 'CC BY-NC 4.0'),
        ZooEntry('us_mobilenet_v2', 'usnet_in1k', us, 'us_mobilenet_v2_calibrated',
                 'https://github.com/JiahuiYu/slimmable_networks/files/2979953/us_mobilenet_v2_calibrated.pt.zip',
                 'us_mobilenet_v2_calibrated.pt.zip', v2, readme, note='27 widths 0.35..1.0 with stored statistics; '
                 'CC BY-NC 4.0'),
    ]
    mn = 'taoyang1122/MutualNet'
    gd = 'https://drive.google.com/open?id={}'
    mreadme = 'MutualNet README query table (BN recalibrated per width-resolution)'
    rows += [
        ZooEntry('us_mobilenet_v1', 'mutualnet_in1k', mn, 'MutualNet MobileNet v1',
                 gd.format('1A36ZJCrkKXQX8T0vZR9kRN5P1fjIDMu2'),
                 'mutualnet_mobilenet_v1.pt', {'w1.0-r224': 72.4, 'w1.0-r192': 70.9, 'w0.5-r160': 60.3,
                                               'w0.25-r128': 45.5}, mreadme,
                 note='widths [0.25, 1]; MutualNet recalibrates BN at every (width, resolution)'),
        ZooEntry('us_mobilenet_v2', 'mutualnet_in1k', mn, 'MutualNet MobileNet v2',
                 gd.format('1GIe5Mpbkc2CptvPbqcEgJtPSoP2WYkNm'),
                 'mutualnet_mobilenet_v2.pt', {'w1.0-r224': 72.9, 'w1.0-r192': 71.8, 'w0.75-r160': 68.3,
                                               'w0.7-r128': 64.2}, mreadme,
                 note='widths [0.7, 1]; MutualNet recalibrates BN at every (width, resolution)'),
        ZooEntry('us_resnet50', 'mutualnet_in1k', mn, 'MutualNet ResNet-50',
                 gd.format('1Br3o58lZqyGzZaqZpqhAfUJhMawFS_Pc'),
                 'mutualnet_resnet50.pt', {'w1.0-r224': 78.6}, 'MutualNet README ("boosting a single network")',
                 note='widths [0.9, 1]: the single-network-boosting model, not an adaptive one'),
    ]
    rs = 'yikaiw/RS-Nets'
    rsd = 'https://drive.google.com/drive/folders/{}'
    rreadme = 'RS-Nets README (top-1 per resolution, private BN of each)'
    res = ('224', '192', '160', '128', '96')
    for m, r, fid, accs in [('rs_resnet18', 'parallel_resnet18', '1NsdxK_y6CPfJ7s3NHWwU0nIfd5LaIwnu',
                             (73.1, 72.2, 71.1, 68.7, 64.1)),
                            ('rs_resnet50', 'parallel_resnet50', '1jYLK-pZvNCzyluum5YgJXf87gFmK9EEJ',
                             (79.3, 78.8, 77.9, 76.3, 72.7)),
                            ('rs_mobilenet_v2', 'parallel_mobilenetv2', '183Arvf6o4GxCZle57V0VmDRh0Twrdc97',
                             (73.0, 72.2, 71.1, 68.8, 63.9))]:
        rows.append(ZooEntry(m, 'rsnet_in1k', rs, r, rsd.format(fid), f'{r}_model_best.pth.tar', dict(zip(res, accs)),
                             rreadme, note='inputs NOT normalised (RGB in [0, 1]); resolutions 224/192/160/128/96'))
    tv = 'torchvision'
    tvu = 'https://download.pytorch.org/models/{}'
    tvs = 'torchvision 0.28 weights enum (IMAGENET1K_V1, acc@1)'
    for m, r, f, t, note in [
            ('resnext50_32x4d', 'resnext50_32x4d IMAGENET1K_V1', 'resnext50_32x4d-7cdf4587.pth', 77.618, ''),
            ('rs_resnet18', 'resnet18 IMAGENET1K_V1', 'resnet18-f37072fd.pth', 69.758,
             'every private BN starts from the single BN'),
            ('rs_resnet50', 'resnet50 IMAGENET1K_V1', 'resnet50-0676ba61.pth', 76.130,
             'every private BN starts from the single BN'),
            ('rs_resnet101', 'resnet101 IMAGENET1K_V1', 'resnet101-63fe2227.pth', 77.374,
             'every private BN starts from the single BN (yikaiw/RS-Nets released no RS-ResNet-101)'),
            ('us_resnet50', 'resnet50 IMAGENET1K_V1', 'resnet50-0676ba61.pth', 76.130,
             'statistics for width 1.0 only: other widths uncalibrated'),
            ('us_vgg16_bn', 'vgg16_bn IMAGENET1K_V1', 'vgg16_bn-6c64b313.pth', 73.360,
             'statistics for width 1.0 only: other widths uncalibrated (MutualNet released no VGG)'),
            ('us_mobilenet_v2', 'mobilenet_v2 IMAGENET1K_V1', 'mobilenet_v2-b0353104.pth', 71.878,
             'statistics for width 1.0 only: other widths uncalibrated'),
            ('rs_mobilenet_v2', 'mobilenet_v2 IMAGENET1K_V1', 'mobilenet_v2-b0353104.pth', 71.878,
             'every private BN starts from the single BN')]:
        rows.append(ZooEntry(m, 'tv_in1k', tv, r, tvu.format(f), f, {'224': t}, tvs, note=note))
    hub = 'https://huggingface.co/timm/{}'
    tms = 'timm results-imagenet.csv (top-1 at 224)'
    rows += [
        ZooEntry('se_resnext50', 'timm_racm_in1k', 'timm', 'seresnext50_32x4d.racm_in1k',
                 hub.format('seresnext50_32x4d.racm_in1k'), 'seresnext50_32x4d.racm_in1k.safetensors',
                 {'224': 81.268}, tms, note='allenai/elastic released no SE-ResNeXt50 baseline'),
        ZooEntry('resnext101_32x4d', 'timm_gluon_in1k', 'timm', 'resnext101_32x4d.gluon_in1k',
                 hub.format('resnext101_32x4d.gluon_in1k'), 'resnext101_32x4d.gluon_in1k.safetensors',
                 {'224': 80.336}, tms),
    ]
    for m, r in [('preact_resnet50', 'resnetv2_50.a1h_in1k'), ('sact_resnet50', 'resnetv2_50.a1h_in1k'),
                 ('preact_resnet101', 'resnetv2_101.a1h_in1k'), ('sact_resnet101', 'resnetv2_101.a1h_in1k')]:
        rows.append(ZooEntry(m, 'timm_a1h_in1k', 'timm', r, hub.format(r), f'{r}.safetensors', {}, '',
                             note='pre-activation ResNet the SACT paper fine-tunes from; halting branches are new '
                                  '(bias -3)' if m.startswith('sact') else 'pre-activation ResNet (SACT dense base)'))
    return rows


ZOO = {e.key: e for e in _rows()}


def zoo_entry(key):
    """The :class:`ZooEntry` of ``'<model>.<tag>'``.

    Raises:
        KeyError: unknown key (the message lists the keys of the same model).
    """
    if key not in ZOO:
        model = key.split('.')[0]
        same = [k for k in ZOO if k.startswith(model + '.')]
        raise KeyError(f'no zoo entry {key!r}; entries for {model}: {same or "none"}; all: {sorted(ZOO)}')
    return ZOO[key]


def entry_for_file(path):
    """The zoo entry whose converted (dynscale or Detectron2) file name is ``path``'s, or None."""
    name = os.path.basename(os.fspath(path))
    for e in ZOO.values():
        if name in (posixpath.basename(e.converted), posixpath.basename(e.d2_converted('fpn')),
                    posixpath.basename(e.d2_converted('c4'))):
            return e
    return None


def convert_command(entry, to='dynscale', layout='fpn', config=None):
    """The shell command that produces ``entry``'s converted file from its download."""
    cmd = ['python', 'tools/convert_weights.py', entry.download_name]
    if to == 'detectron2':
        cmd += [entry.d2_converted(layout), '--model', entry.model, '--to', 'detectron2',
                '--config-file', config or '<detectron2 config>']
    else:
        cmd += [entry.converted, '--model', entry.model]
    if entry.source:
        cmd += ['--source', entry.source]
    cmd += list(entry.convert_args)
    return ' '.join(cmd)


def missing_file_message(path, config=None):
    """Error text for a missing checkpoint a config expects: the zoo row and its convert command."""
    e = entry_for_file(path)
    if e is None:
        return (f'checkpoint not found: {path}. Produce it with tools/pretrain.py or convert a released file with '
                f'tools/convert_weights.py (see MODEL_ZOO.md)')
    d2 = path.endswith('.pkl')
    layout = 'c4' if path.endswith('_c4.pkl') else 'fpn'
    return (f'checkpoint not found: {path}. It is the converted {e.origin} {e.release} weights (MODEL_ZOO.md row '
            f'{e.key}). Download {e.url} as {e.download_name}, then run:\n  '
            + convert_command(e, 'detectron2' if d2 else 'dynscale', layout, config))

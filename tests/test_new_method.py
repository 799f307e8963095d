"""Adding a method (issue 10, ARCHITECTURE.md): a policy registered in the training core trains in every frontend
without frontend code.

The method below runs two sub-networks per step, the batch as loaded and a smaller copy whose ground-truth loss is
weighted 0.5.  It is registered with ``backbones.training.register_policy`` only, then trained through the
MMSeg segmentor, the MMDet detector, the Detectron2 trainer and the pretraining tool's generic method.
"""
import contextlib
import importlib.util
import os
import os.path as osp
import sys

import pytest
import torch

import backbones
from backbones import training
from backbones.training import StandardPolicy, Subnet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NAME = 'test_two_pass'


class TwoPassPolicy(StandardPolicy):
    """Full input, then ``small_size`` (ground-truth weight 0.5)."""

    method = NAME

    def __init__(self, small_size=24, max_input_size=None, seed=None):
        super().__init__(seed)
        self.small_size = small_size
        self.max_input_size = max_input_size

    def subnets(self, step):
        return [Subnet('full'), Subnet('small', input_size=self.small_size, gt_weight=0.5)]


@pytest.fixture(autouse=True)
def registered():
    training.register_policy(NAME, TwoPassPolicy)
    yield
    training.POLICIES.pop(NAME)


def test_registration_rules():
    with pytest.raises(ValueError, match='already registered'):
        training.register_policy(NAME, TwoPassPolicy)
    with pytest.raises(ValueError, match='not a TrainingPolicy'):
        training.register_policy('x', dict)
    net = backbones.create('resnext50_32x4d', num_classes=0)
    assert isinstance(training.policy_for(net, NAME, small_size=40), TwoPassPolicy)
    assert training.default_method(net) == 'standard'  # trains() is False: never picked implicitly
    with pytest.raises(ValueError, match='does not take'):
        training.policy_for(net, NAME, tau=0.1)


def _need(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f'{module} is not installed')


def test_mmseg_segmentor_trains_a_registered_method():
    _need('mmseg')
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import plugins.mm  # noqa: F401
    init_default_scope('mmseg')
    seg = MODELS.build(dict(
        type='DynscaleEncoderDecoder', policy=dict(type=NAME, small_size=32, max_input_size=64),
        data_preprocessor=dict(type='SegDataPreProcessor'),
        backbone=dict(type='ElasticBackbone', arch='resnext50_32x4d', out_indices=(3,)),
        decode_head=dict(type='FCNHead', in_channels=2048, channels=8, num_convs=1, num_classes=3, dropout_ratio=0)))
    sizes = []
    seg.backbone.model.stem.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    samples = []
    for _ in range(2):
        ds = SegDataSample()
        ds.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        ds.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(ds)
    losses = seg.loss(torch.randn(2, 3, 64, 64), samples)
    assert sizes == [(64, 64), (32, 32)]
    assert {'full.decode.loss_ce', 'small.decode.loss_ce'} <= set(losses)
    loss, _ = seg.parse_losses(losses)
    loss.backward()
    assert seg.backbone.model.stem.conv.weight.grad is not None


def test_mmdet_detector_trains_a_registered_method():
    _need('mmdet')
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import plugins.mm  # noqa: F401
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'det_configs', 'mmdet', 'elastic',
                                   'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py'))
    model_cfg = dict(cfg.model, type='DynscaleTwoStageDetector', policy=dict(type=NAME, small_size=64), max_size=96)
    det = MODELS.build(model_cfg)
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_mm_det import _batch
    d = det.data_preprocessor(_batch(n=2), True)
    losses = det.loss(d['inputs'], d['data_samples'])
    assert [t for t, *_ in det.last_subnets] == ['', 'small']
    assert min(det.last_subnets[1][3]) <= 64 + 31  # the second pass ran at shorter side 64 (padded to 32)
    assert {'loss_cls', 'small_loss_cls', 'small_loss_mask'} <= set(losses)
    loss, _ = det.parse_losses(losses)
    assert torch.isfinite(loss)


def test_detectron2_trainer_trains_a_registered_method(tmp_path):
    _need('detectron2')
    import itertools

    from detectron2.utils.events import EventStorage

    from plugins.detectron2 import DynscaleSimpleTrainer, DynscaleTrainer, build_policy, find_dynscale_backbone
    from plugins.detectron2.config import get_dynscale_cfg
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_detectron2_plugin import SMALL, _batch
    base = osp.join(ROOT, 'det_configs', 'detectron2', 'quick_schedules', 'mask_rcnn_resnext50_elastic_FPN_quick.yaml')
    yaml = tmp_path / 'two_pass.yaml'
    yaml.write_text(f'_BASE_: "{base}"\nMODEL:\n  DYNSCALE:\n    POLICY:\n      NAME: "{NAME}"\n      SMALL_SIZE: 48\n')
    cfg = get_dynscale_cfg(str(yaml), ['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', ''])
    cfg.merge_from_list(SMALL)
    model = DynscaleTrainer.build_model(cfg)
    bb = find_dynscale_backbone(model)
    policy = build_policy(cfg, bb)
    assert isinstance(policy, TwoPassPolicy) and policy.small_size == 48
    trainer = DynscaleSimpleTrainer(model, itertools.repeat(_batch()), DynscaleTrainer.build_optimizer(cfg, model),
                                    policy, bb, max_size=160)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    assert [s.tag for s in trainer.last_subnets] == ['full', 'small']
    assert set(trainer.last_subnet_losses) == {'full', 'small'}


def test_pretraining_tool_trains_a_registered_method(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import pretrain
    from pretrain_lib import methods as pm
    os.makedirs(tmp_path / 'train' / 'a')
    args = pretrain.parse_args(['--data-path', str(tmp_path), '--model', 'resnext50_32x4d', '--method', NAME,
                                '--policy-options', '{"small_size": 32}', '--no-tensorboard'])
    model = backbones.create('resnext50_32x4d', num_classes=3)
    method = pm.build_method(args, model)
    assert isinstance(method, pm.PolicyMethod) and isinstance(method.policy, TwoPassPolicy)
    assert method.policy.small_size == 32
    sizes = []
    model.stem.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    net = pm.TrainNet(model, method.policy)
    ctx = pm.StepContext(None, True, contextlib.nullcontext, lambda loss: loss.backward(), step_index=0)
    out = method.train_step(net, torch.randn(2, 3, 48, 48), torch.tensor([0, 2]), ctx)
    assert sizes == [(48, 48), (32, 32)]
    assert out['n'] == 2 and out['loss'] > 0
    assert model.stem.conv.weight.grad is not None


class WidthOnlyPolicy(TwoPassPolicy):
    """A registered method that needs a width multiplier (its policy's ``capability``)."""

    method = NAME + '_width'
    capability = 'width'


def test_frontends_check_a_registered_methods_capability_from_its_policy():
    """Which backbones a method trains is the policy's ``capability``: a new method needing a width multiplier is
    refused on an Elastic backbone by the MMSeg/MMDet config check and the Detectron2 option check, and its
    method-specific pretraining flags go with it, with no table in any frontend to extend."""
    from backbones.capabilities import OptionNotApplicable
    name = NAME + '_width'
    training.register_policy(name, WidthOnlyPolicy)
    try:
        assert training.capability_of(name) == 'width' and training.capability_of(NAME) is None
        assert name in training.methods_needing('width') and 'usnet' in training.methods_needing('width')
        assert training.methods_needing('ponder_cost') == ['sact']
        with pytest.raises(ValueError, match='unknown training method'):
            training.capability_of('no_such_method')
        if importlib.util.find_spec('mmengine') is not None:
            from plugins.mm.options import check_config_options
            cfg = {'model': {'type': 'DynscaleEncoderDecoder', 'policy': {'type': name},
                             'backbone': {'type': 'DynscaleBackbone', 'arch': 'resnext50_elastic'}}}
            with pytest.raises(OptionNotApplicable, match=f"model.policy.type='{name}'.*width multiplier"):
                check_config_options(cfg)
            cfg['model']['backbone']['arch'] = 'us_mobilenet_v2'
            assert 'width' in check_config_options(cfg)
        if importlib.util.find_spec('detectron2') is not None:
            from plugins.detectron2.config import get_dynscale_cfg
            yaml = osp.join(ROOT, 'det_configs', 'detectron2', 'quick_schedules',
                            'mask_rcnn_resnext50_elastic_FPN_quick.yaml')
            with pytest.raises(OptionNotApplicable, match=f"POLICY.NAME '{name}'.*resnext50_elastic.*width multiplier"):
                get_dynscale_cfg(yaml, ['MODEL.DYNSCALE.POLICY.NAME', name])
    finally:
        training.POLICIES.pop(name)


def _bn_stats(backbone):
    from torch.nn.modules.batchnorm import _BatchNorm
    return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in backbone.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats}


def _load_bn_stats(backbone, stats):
    for n, m in backbone.named_modules():
        if n in stats:
            m.running_mean.copy_(stats[n][0])
            m.running_var.copy_(stats[n][1])


class RecalibratedPolicy(TwoPassPolicy):
    """A method with its own evaluation switch and calibration: two passes in training; before evaluation the
    backbone's BN statistics are re-estimated (``needs_calibration``) into a set kept apart from the trained one,
    which :meth:`eval_context` swaps in (the trained statistics where none were calibrated)."""

    method = NAME + '_calibrated'
    needs_calibration = True
    instances = []

    def __init__(self, small_size=24, max_input_size=None, seed=None):
        super().__init__(small_size, max_input_size, seed)
        self.calibrated = {}  # (id(backbone), bn_resolution) -> BN name -> (mean, var)
        self.evaluated_calibrated = 0
        RecalibratedPolicy.instances.append(self)

    @contextlib.contextmanager
    def calibration_context(self, backbone, width=None, bn_resolution=None):
        assert width is None, 'no width multiplier here'
        trained = _bn_stats(backbone)
        try:
            yield
            self.calibrated[id(backbone), bn_resolution] = _bn_stats(backbone)
        finally:
            _load_bn_stats(backbone, trained)

    @contextlib.contextmanager
    def eval_context(self, backbone, width=None, bn_resolution=None):
        stats = self.calibrated.get((id(backbone), bn_resolution))
        if stats is None:
            yield
            return
        trained = _bn_stats(backbone)
        _load_bn_stats(backbone, stats)
        self.evaluated_calibrated += 1
        try:
            yield
        finally:
            _load_bn_stats(backbone, trained)


def test_calibrate_goes_through_the_policys_calibration_context():
    """``training.calibrate(policy=...)`` re-estimates a non-slimmable backbone's BNs inside the policy's context;
    the base policy has none; the backbone's trained statistics are untouched."""
    name = RecalibratedPolicy.method
    training.register_policy(name, RecalibratedPolicy)
    try:
        net = backbones.create('resnext50_32x4d', num_classes=3, cardinality=4, base_width=4).eval()
        trained = _bn_stats(net)
        policy = training.policy_for(net, name)
        g = torch.Generator().manual_seed(0)
        batches = [3 + 2 * torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
        assert training.calibrate(net, batches, backbone=net, policy=policy) == 2
        after = _bn_stats(net)
        assert all(torch.equal(trained[n][0], after[n][0]) for n in trained)
        calibrated = policy.calibrated[id(net), None]
        assert set(calibrated) == set(trained)
        assert not torch.allclose(calibrated['stem.bn'][0], trained['stem.bn'][0])
        with pytest.raises(ValueError, match='needs backbone='):
            training.calibrate(net, batches, policy=policy)
        with pytest.raises(ValueError, match='has no post-statistics BN'):
            training.calibrate(net, batches, backbone=net, policy=training.policy_for(net, 'standard'))
    finally:
        training.POLICIES.pop(name)


def test_pretraining_tool_calibrates_and_evaluates_a_registered_method(tmp_path):
    """``tools/pretrain.py --method <new>``: trains, then its final evaluation calibrates through the policy and
    evaluates in its ``eval_context`` with the calibrated statistics (the trained ones stay in the exported file)."""
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import pretrain
    from test_pretrain import BASE, _make_folder
    name = RecalibratedPolicy.method
    training.register_policy(name, RecalibratedPolicy)
    RecalibratedPolicy.instances.clear()
    try:
        data = _make_folder(tmp_path / 'data', n_train=4, n_val=2, size=36)
        out = tmp_path / 'run'
        rows = pretrain.main(['--data-path', str(data), '--output-dir', str(out), *BASE, '--model', 'resnext50_32x4d',
                              '--model-kwargs', '{"cardinality": 4, "base_width": 4}', '--method', name,
                              '--train-crop-size', '40', '--policy-options', '{"small_size": 32}', '--calib-batches',
                              '1'])
    finally:
        training.POLICIES.pop(name)
    policy = RecalibratedPolicy.instances[-1]
    assert len(rows) == 1 and rows[0]['calibrated'] is True and 0 <= rows[0]['top1'] <= 100
    assert policy.calibrated and policy.evaluated_calibrated >= 1
    stats = next(iter(policy.calibrated.values()))
    exported = torch.load(out / 'backbone.pth', weights_only=False)['state_dict']
    assert not torch.allclose(stats['stem.bn'][0], exported['stem.bn.running_mean'])
    log = (out / 'log.txt').read_text()
    assert 'calibrated BN statistics' in log


@pytest.fixture
def recalibrated():
    training.register_policy(RecalibratedPolicy.method, RecalibratedPolicy)
    RecalibratedPolicy.instances.clear()
    yield RecalibratedPolicy.method
    training.POLICIES.pop(RecalibratedPolicy.method)


def test_mmseg_calibrates_and_evaluates_a_registered_method(recalibrated):
    """MMSeg: ``BNCalibrationHook`` calibrates a ``DynscaleEncoderDecoder`` whose registered policy needs it (the
    decode head's BNs too), and inference runs in the policy's ``eval_context`` with those statistics."""
    _need('mmseg')
    from types import SimpleNamespace

    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import plugins.mm  # noqa: F401
    from backbones.capabilities import OptionNotApplicable
    from plugins.mm.hooks import BNCalibrationHook
    from plugins.mm.options import check_config_options
    init_default_scope('mmseg')
    # the config check: the calibration hook applies to any model this method trains, not only slimmable ones
    cfg = {'model': {'type': 'DynscaleEncoderDecoder', 'policy': {'type': recalibrated},
                     'backbone': {'type': 'DynscaleBackbone', 'arch': 'resnext50_32x4d'}},
           'custom_hooks': [{'type': 'BNCalibrationHook'}]}
    check_config_options(cfg)
    cfg['model']['policy'] = {'type': 'standard'}
    with pytest.raises(OptionNotApplicable, match='BNCalibrationHook'):
        check_config_options(cfg)
    seg = MODELS.build(dict(
        type='DynscaleEncoderDecoder', policy=dict(type=recalibrated, small_size=32, max_input_size=64),
        data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
        backbone=dict(type='DynscaleBackbone', arch='resnext50_32x4d', out_indices=(3,), cardinality=4, base_width=4),
        decode_head=dict(type='FCNHead', in_channels=2048, channels=8, num_convs=1, num_classes=3, dropout_ratio=0,
                         norm_cfg=dict(type='BN'))))
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    def sample():
        ds = SegDataSample()
        ds.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        ds.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        return ds
    g = torch.Generator().manual_seed(0)
    batches = [dict(inputs=[(100 + 60 * torch.rand(3, 64, 64, generator=g)).to(torch.uint8) for _ in range(2)],
                    data_samples=[sample(), sample()]) for _ in range(2)]
    head_before = seg.decode_head.convs[0].bn.running_mean.clone()
    trained = _bn_stats(seg.backbone.model)
    seg.eval()
    BNCalibrationHook(num_batches=2, dataloader=batches).calibrate(SimpleNamespace(model=seg, cfg=None))
    policy = RecalibratedPolicy.instances[-1]
    assert list(policy.calibrated) == [(id(seg.backbone.model), None)]
    assert not torch.allclose(policy.calibrated[id(seg.backbone.model), None]['stem.bn'][0], trained['stem.bn'][0])
    assert torch.equal(_bn_stats(seg.backbone.model)['stem.bn'][0], trained['stem.bn'][0])  # trained set kept
    assert not torch.equal(seg.decode_head.convs[0].bn.running_mean, head_before)  # heads=True: the head too
    with torch.no_grad():
        out = seg.encode_decode(torch.randn(1, 3, 64, 64), [dict(img_shape=(64, 64))])
    assert out.shape == (1, 3, 64, 64) and policy.evaluated_calibrated == 1


def test_mmdet_calibrates_and_evaluates_a_registered_method(recalibrated):
    """MMDet: ``calibrate_bn`` of a ``DynscaleTwoStageDetector`` whose registered policy needs it, then
    ``predict`` in the policy's ``eval_context`` with the calibrated statistics."""
    _need('mmdet')
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import plugins.mm  # noqa: F401
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'det_configs', 'mmdet', 'elastic',
                                   'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py'))
    model_cfg = dict(cfg.model, type='DynscaleTwoStageDetector', policy=dict(type=recalibrated, small_size=64),
                     max_size=96)
    model_cfg['backbone'] = dict(model_cfg['backbone'], type='DynscaleBackbone', arch='resnext50_32x4d',
                                 cardinality=4, base_width=4)
    det = MODELS.build(model_cfg).eval()
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_mm_det import _batch
    trained = _bn_stats(det.backbone.model)
    assert det.calibrate_bn([_batch(n=2), _batch(n=2)]) == 2
    policy = RecalibratedPolicy.instances[-1]
    key = (id(det.backbone.model), det.test_resolution)
    assert list(policy.calibrated) == [key]
    assert not torch.allclose(policy.calibrated[key]['stem.bn'][0], trained['stem.bn'][0])
    d = det.data_preprocessor(_batch(n=1), False)
    with torch.no_grad():
        det.predict(d['inputs'], d['data_samples'])
    assert policy.evaluated_calibrated == 1


def test_detectron2_calibrates_and_evaluates_a_registered_method(recalibrated, tmp_path):
    """Detectron2: ``DynscaleTrainer.test`` with ``MODEL.DYNSCALE.POLICY.NAME`` a registered method that needs
    calibration: post-statistics BN of every evaluated scale through the policy, then COCO evaluation in its
    ``eval_context`` with those statistics."""
    _need('detectron2')
    from plugins.detectron2 import DynscaleTrainer, find_dynscale_backbone
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_detectron2_plugin import CONFIG_DIR, _cfg, register_tiny_dataset
    register_tiny_dataset(tmp_path)
    cfg = _cfg(osp.join(CONFIG_DIR, 'quick_schedules', 'mask_rcnn_resnext50_elastic_FPN_quick.yaml'),
               ['DATASETS.TRAIN', '("dynscale_tiny_train",)', 'DATASETS.TEST', '("dynscale_tiny_val",)',
                'MODEL.ROI_HEADS.NUM_CLASSES', '2', 'MODEL.DYNSCALE.POLICY.NAME', recalibrated,
                'MODEL.DYNSCALE.NORM', 'BN', 'MODEL.BACKBONE.FREEZE_AT', '0',
                'MODEL.DYNSCALE.CALIBRATION.NUM_BATCHES', '2', 'DATALOADER.NUM_WORKERS', '0',
                'OUTPUT_DIR', str(tmp_path / 'out')])
    model = DynscaleTrainer.build_model(cfg)
    net = find_dynscale_backbone(model).net
    trained = _bn_stats(net)
    res = DynscaleTrainer.test(cfg, model)
    assert 'bbox' in res and 'AP' in res['bbox']
    policy = RecalibratedPolicy.instances[-1]
    scale = cfg.INPUT.MIN_SIZE_TEST
    assert list(policy.calibrated) == [(id(net), scale)] and policy.evaluated_calibrated >= 1
    assert not torch.allclose(policy.calibrated[id(net), scale]['stem.bn'][0], trained['stem.bn'][0])
    assert torch.equal(_bn_stats(net)['stem.bn'][0], trained['stem.bn'][0])


@pytest.mark.slow
def test_pretraining_command_line_imports_trains_calibrates_and_evaluates_a_users_method(tmp_path):
    """``python tools/pretrain.py --custom-imports cli_method --method test_cli_calibrated``: the user's module
    registers the method in the new process; it trains, calibrates and evaluates; an unknown module is refused
    naming the fix."""
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from conftest import run_tool
    from test_pretrain import BASE, _make_folder
    data = _make_folder(tmp_path / 'data', n_train=4, n_val=2, size=36)
    env = {'PYTHONPATH': os.pathsep.join([ROOT, osp.join(ROOT, 'tests')])}
    common = ['tools/pretrain.py', '--data-path', data, *BASE, '--model', 'resnext50_32x4d',
              '--model-kwargs', '{"cardinality": 4, "base_width": 4}', '--train-crop-size', '40',
              '--method', 'test_cli_calibrated', '--policy-options', '{"small_size": 32}', '--calib-batches', '1']
    r = run_tool([*common, '--output-dir', str(tmp_path / 'run'), '--custom-imports', 'cli_method'], env=env,
                 subprocess_run=True)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    with open(tmp_path / 'run' / 'eval.json') as f:
        rows = json.load(f)
    assert len(rows) == 1 and rows[0]['calibrated'] is True
    assert 'calibrated BN statistics' in (tmp_path / 'run' / 'log.txt').read_text()
    r = run_tool([*common, '--output-dir', str(tmp_path / 'bad'), '--custom-imports', 'no_such_method_module'],
                 env=env, subprocess_run=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'PYTHONPATH' in out
    assert '--custom-imports no_such_method_module: no module named' in out


def test_detectron2_command_line_imports_a_users_method(tmp_path):
    """``tools/train_det.py --custom-imports cli_method``: ``MODEL.DYNSCALE.POLICY.NAME test_cli_calibrated`` is
    known in the new process (without the flag it is refused as unknown); the run then stops at the unreadable
    ``MODEL.WEIGHTS`` given here, before any evaluation."""
    _need('detectron2')
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from conftest import run_tool
    weights = tmp_path / 'not_weights.pth'
    weights.write_text('not a checkpoint\n')
    env = {'PYTHONPATH': os.pathsep.join([ROOT, osp.join(ROOT, 'tests')])}
    yaml = osp.join(ROOT, 'det_configs', 'detectron2', 'quick_schedules', 'mask_rcnn_resnext50_elastic_FPN_quick.yaml')
    opts = ['OUTPUT_DIR', str(tmp_path / 'out'), 'MODEL.WEIGHTS', str(weights),
            'MODEL.DYNSCALE.POLICY.NAME', 'test_cli_calibrated', 'MODEL.DYNSCALE.CALIBRATION.NUM_BATCHES', '1']
    r = run_tool(['tools/train_det.py', '--eval-only', '--config-file', yaml, *opts], env=env, subprocess_run=True)
    assert r.returncode != 0 and "unknown training method 'test_cli_calibrated'" in r.stderr, r.stderr[-2000:]
    r = run_tool(['tools/train_det.py', '--eval-only', '--custom-imports', 'cli_method', '--config-file', yaml, *opts],
                 env=env, subprocess_run=True)
    assert r.returncode != 0 and 'unknown training method' not in r.stderr, r.stderr[-2000:]
    assert str(weights) in r.stderr and 'not_weights.pth' in r.stderr, r.stderr[-2000:]


@pytest.fixture
def cli_method_unimported():
    """``cli_method`` neither imported nor registered, so that a config's ``custom_imports`` has to bring it; the
    same afterwards."""
    def forget():
        sys.modules.pop('cli_method', None)
        training.POLICIES.pop('test_cli_calibrated', None)
    forget()
    RecalibratedPolicy.instances.clear()
    yield 'test_cli_calibrated'
    forget()


@pytest.mark.slow
def test_mmseg_config_imports_trains_calibrates_and_evaluates_a_users_method(cli_method_unimported, shared_dir,
                                                                             tmp_path):
    """``tools/train_seg.py CONFIG`` where the config names the user's module in ``custom_imports`` and its method in
    ``model.policy``: MMEngine imports the module (which registers the method), the config check accepts the
    calibration hook for it, two iterations train two passes each, ``BNCalibrationHook`` calibrates through the
    policy and validation on the shared VOC subset runs in its ``eval_context`` with those statistics."""
    _need('mmseg')
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import train_seg
    from test_model_zoo import _voc_root  # the shared VOC subset, or a skip naming the missing folder
    base = osp.join(ROOT, 'seg_configs', 'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')
    cfg = tmp_path / 'users_method.py'
    cfg.write_text(f"_base_ = {base!r}\n"
                   "custom_imports = dict(imports=['plugins.mm', 'cli_method'], allow_failed_imports=False)\n"
                   "model = dict(type='DynscaleEncoderDecoder',\n"
                   f"             policy=dict(type={cli_method_unimported!r}, small_size=65))\n"
                   "custom_hooks = [dict(type='BNCalibrationHook', num_batches=1)]\n")
    assert 'cli_method' not in sys.modules
    runner = train_seg.main([str(cfg), '--work-dir', str(tmp_path / 'work'), '--data-root', _voc_root(shared_dir),
                             '--cfg-options', 'randomness.seed=0', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                             'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
                             'val_dataloader.dataset.indices=2'])
    assert runner.iter == 2 and 'cli_method' in sys.modules
    policy = RecalibratedPolicy.instances[-1]
    assert type(policy).method == cli_method_unimported and runner.model.policy is policy
    assert list(policy.calibrated) == [(id(runner.model.backbone.model), None)]
    assert policy.evaluated_calibrated == 2  # each of the two val images in the calibrated statistics
    assert 0.0 <= runner.message_hub.get_scalar('val/mIoU').current() <= 100.0


@pytest.mark.slow
def test_mmdet_config_imports_trains_calibrates_and_evaluates_a_users_method(cli_method_unimported, shared_dir,
                                                                             tmp_path, monkeypatch):
    """``tools/train_det_mm.py CONFIG`` with the user's module in ``custom_imports`` and its method in
    ``model.policy`` of a ``DynscaleTwoStageDetector``: one Mask R-CNN iteration (two passes) on the shared COCO
    subset, ``BNCalibrationHook`` calibrates through the policy, and the COCO evaluation of one val image runs in
    its ``eval_context`` with those statistics."""
    _need('mmdet')
    coco = osp.join(shared_dir, 'datasets', 'coco')
    if not osp.isdir(coco):
        pytest.skip(f'COCO subset missing: expected {coco} with annotations/, train2017/, val2017/')
    monkeypatch.setenv('DYNSCALE_DATASETS', osp.join(shared_dir, 'datasets'))
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_mm_det import _val_subset

    from tools import train_det_mm
    ann = _val_subset(coco, 1, str(tmp_path / 'instances_val_1.json'))
    base = osp.join(ROOT, 'det_configs', 'mmdet', 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py')
    cfg = tmp_path / 'users_method.py'
    cfg.write_text(f"_base_ = {base!r}\n"
                   "custom_imports = dict(imports=['plugins.mm', 'cli_method'], allow_failed_imports=False)\n"
                   "model = dict(type='DynscaleTwoStageDetector', max_size=160,\n"
                   f"             policy=dict(type={cli_method_unimported!r}, small_size=96))\n"
                   "custom_hooks = [dict(type='BNCalibrationHook', num_batches=1)]\n")
    assert 'cli_method' not in sys.modules
    runner = train_det_mm.main([
        str(cfg), '--work-dir', str(tmp_path / 'work'), '--cfg-options', 'randomness.seed=0',
        'train_cfg.max_iters=1', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
        'model.train_cfg.rcnn.sampler.num=32', 'train_dataloader.dataset.pipeline.2.scale=(160,128)',
        'val_dataloader.dataset.pipeline.1.scale=(160,128)', 'model.test_cfg.rcnn.max_per_img=20',
        f'val_dataloader.dataset.ann_file={ann}', f'val_evaluator.ann_file={ann}'])
    assert runner.iter == 1 and 'cli_method' in sys.modules
    policy = RecalibratedPolicy.instances[-1]
    assert type(policy).method == cli_method_unimported and runner.model.policy is policy
    net = runner.model.backbone.model
    assert [k[0] for k in policy.calibrated] == [id(net)] and policy.evaluated_calibrated == 1
    assert 0.0 <= runner.message_hub.get_scalar('val/coco/bbox_mAP').current() <= 1.0


def test_detectron2_command_line_trains_calibrates_and_evaluates_a_users_method(cli_method_unimported, tmp_path):
    """``tools/train_det.py --custom-imports cli_method ... MODEL.DYNSCALE.POLICY.NAME test_cli_calibrated`` (its
    ``main`` with the parsed command line, in this process so that the tiny registered dataset is known): the flag
    imports the module, one iteration trains two passes, and the evaluation after training calibrates through the
    policy and runs in its ``eval_context`` with those statistics."""
    _need('detectron2')
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    import train_det
    from test_detectron2_plugin import CONFIG_DIR, register_tiny_dataset
    register_tiny_dataset(tmp_path)
    args = train_det.parser().parse_args([
        '--custom-imports', 'cli_method', '--config-file',
        osp.join(CONFIG_DIR, 'quick_schedules', 'mask_rcnn_resnext50_elastic_FPN_quick.yaml'),
        'DATASETS.TRAIN', '("dynscale_tiny_train",)', 'DATASETS.TEST', '("dynscale_tiny_val",)',
        'MODEL.ROI_HEADS.NUM_CLASSES', '2', 'MODEL.DYNSCALE.POLICY.NAME', cli_method_unimported,
        'MODEL.DYNSCALE.NORM', 'BN', 'MODEL.BACKBONE.FREEZE_AT', '0', 'MODEL.DYNSCALE.CALIBRATION.NUM_BATCHES', '1',
        'SOLVER.MAX_ITER', '1', 'DATALOADER.NUM_WORKERS', '0', 'SEED', '0', 'OUTPUT_DIR', str(tmp_path / 'out')])
    assert 'cli_method' not in sys.modules
    train_det.main(args)  # detectron2's DefaultTrainer.train: no result without TEST.EXPECTED_RESULTS
    assert 'cli_method' in sys.modules
    import json
    with open(tmp_path / 'out' / 'metrics.json') as f:
        rows = [json.loads(line) for line in f]
    assert any('bbox/AP' in r for r in rows), rows  # the evaluation after training
    trained = [p for p in RecalibratedPolicy.instances if type(p).method == cli_method_unimported]
    assert trained and any(p.calibrated and p.evaluated_calibrated >= 1 for p in trained)

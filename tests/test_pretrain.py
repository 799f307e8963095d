"""tools/pretrain.py: every method trains and exports, exact resume after SIGKILL, unreadable images,
2-process gloo DDP, recipes/optimizer/schedule helpers, and a slice of the real Imagenette data.

Runs are tiny (32-64 px images, 1-2 epochs of a few iterations) on a temporary ImageFolder whose classes
differ by colour.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import backbones
from backbones.pretrained import load_backbone_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import pretrain  # noqa: E402
from pretrain_lib import data as pdata  # noqa: E402
from pretrain_lib import methods, optim, recipes  # noqa: E402

SCRIPT = os.path.join(TOOLS, 'pretrain.py')
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _make_folder(root, n_train=6, n_val=3, size=40, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for c, col in enumerate(COLOURS):
            d = os.path.join(root, split, f'c{c}')
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                a = np.clip(rng.normal(col, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(os.path.join(d, f'{i}.jpg'))
    return str(root)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin against other processes and a
    training step gets about 10x slower (measured: 0.17 s vs 2.6 s CPU for one MobileNet step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """4 classes x (6 train, 3 val) 40x40 JPEGs."""
    d = tmp_path_factory.mktemp('tiny')
    yield _make_folder(d)
    shutil.rmtree(d, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


BASE = ['--epochs', '1', '--batch-size', '4', '--train-crop-size', '32', '--val-resize-size', '36',
        '--val-crop-size', '32', '--workers', '0', '--log-interval', '1', '--lr', '0.05', '--no-tensorboard']
SMALL_ELASTIC = ['--model', 'resnext50_elastic', '--model-kwargs', '{"cardinality": 4, "base_width": 4}']


def _run(tiny, out, *extra):
    return pretrain.main(['--data-path', tiny, '--output-dir', str(out), *BASE, *extra])


def _meta_kwargs(meta):
    """Factory arguments recorded in an exported checkpoint's metadata (widths, resolutions, model kwargs)."""
    kw = dict(meta.get('model_kwargs') or {})
    if meta['family'] == 'slimmable':
        kw['width_range'] = tuple(meta['widths'])
    if meta['family'] == 'rsnet':
        kw['resolutions'] = tuple(meta['resolutions'])
    return kw


def _create_from_meta(meta):
    """Build the exported variant without a head, as its metadata describes it."""
    return backbones.create(meta['variant'], num_classes=0, **_meta_kwargs(meta))


def _check_outputs(out, steps):
    for name in ('last.pth', 'best.pth', 'backbone.pth', 'args.json', 'log.txt', 'train_log.csv', 'summary.csv',
                 'eval.txt', 'eval.json'):
        assert os.path.isfile(os.path.join(out, name)), name
    ck = torch.load(os.path.join(out, 'last.pth'), map_location='cpu', weights_only=False)
    assert ck['global_step'] == steps and ck['epoch'] == 1 and ck['consumed'] == 0
    assert {'optimizer', 'lr_scheduler', 'scaler', 'rng', 'model'} <= set(ck)
    bb = torch.load(os.path.join(out, 'backbone.pth'), map_location='cpu', weights_only=False)
    meta = bb['meta']
    model = _create_from_meta(meta)
    rep = load_backbone_state(model, os.path.join(out, 'backbone.pth'), strict=True)
    assert rep['missing'] == [] and rep['unexpected'] == [] and rep['shape_mismatch'] == []
    # the exported tensors are the trained ones (not the fresh initialisation)
    trained = {k[len('model.'):]: v for k, v in ck['model'].items() if k.startswith('model.')}
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    # the trained classifier is kept (tools/export.py, query_table and --evaluate measure through it)
    heads = {k: v for k, v in bb['state_dict'].items() if k.startswith('head.')}
    assert heads and all(torch.equal(v, trained[k]) for k, v in heads.items())
    for key in ('family', 'variant', 'input_format', 'pixel_mean', 'pixel_std', 'method'):
        assert meta.get(key) is not None, key
    if _has('mmseg') or _has('mmdet'):
        # the OpenMMLab adapter loads it strictly (it raises on any unmatched backbone key)
        from plugins.mm.backbones import DynscaleBackbone
        mm = DynscaleBackbone(arch=meta['variant'], **_meta_kwargs(meta),
                              init_cfg=dict(type='Pretrained', checkpoint=os.path.join(out, 'backbone.pth')))
        mm.init_weights()
        sd = mm.state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(sd['model.' + k], v), k
    with open(os.path.join(out, 'args.json')) as f:
        assert json.load(f)['output_dir'] == str(out)
    return ck, meta


def test_evaluate_refuses_a_checkpoint_without_classifier(tiny, tmp_path):
    """``--evaluate`` of a backbone checkpoint saved without classifier would measure a classifier of random
    weights: it fails naming the files that have one; fine-tuning from it logs the new classifier."""
    from backbones.checkpoint import save_backbone_checkpoint
    model = backbones.create('resnext50_elastic', num_classes=4, cardinality=4, base_width=4)
    path = save_backbone_checkpoint(model, str(tmp_path / 'bb.pth'))
    with pytest.raises(ValueError, match='no classifier.*top-1 would measure random weights'):
        _run(tiny, tmp_path / 'ev', '--pretrained', path, *SMALL_ELASTIC, '--evaluate')
    _run(tiny, tmp_path / 'ft', '--pretrained', path, *SMALL_ELASTIC, '--max-train-samples', '4', '--no-final-eval')
    with open(tmp_path / 'ft' / 'log.txt') as f:
        assert 'new classifier for 4 classes (the file has none)' in f.read()


def test_standard_elastic(tiny, tmp_path):
    rows = _run(tiny, tmp_path, *SMALL_ELASTIC, '--max-train-samples', '8')
    ck, meta = _check_outputs(tmp_path, steps=2)
    assert meta['family'] == 'elastic' and meta['method'] == 'standard'
    assert len(rows) == 1 and rows[0]['n'] == 12 and rows[0]['macs'] > 0 and 0 <= rows[0]['top1'] <= 100


def test_usnet(tiny, tmp_path):
    tb = '--tensorboard' if _has('tensorboard') else '--no-tensorboard'
    rows = _run(tiny, tmp_path, '--model', 'us_mobilenet_v1', '--method', 'usnet', '--max-train-samples', '8',
                '--eval-widths', '1.0', '0.5', '0.25', '--calib-batches', '2', tb)
    ck, meta = _check_outputs(tmp_path, steps=2)
    assert [r['width'] for r in rows] == [1.0, 0.5, 0.25]
    macs = [r['macs'] for r in rows]
    assert macs[0] > macs[1] > macs[2] > 0
    assert all(r['calibrated'] for r in rows)
    assert meta['widths'] == [0.25, 1.0] and meta['channel_divisor'] == 8
    log = open(os.path.join(tmp_path, 'train_log.csv')).read()
    assert 'loss_min' in log.splitlines()[0]
    if tb == '--tensorboard':
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(os.path.join(tmp_path, 'tb'))
        ea.Reload()
        assert [e.step for e in ea.Scalars('train/loss')] == [1, 2]
        assert [e.step for e in ea.Scalars('val/top1_w1.0')] == [2]


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_mutualnet_budget_table(tiny, tmp_path):
    rows = _run(tiny, tmp_path, '--model', 'us_mobilenet_v2', '--method', 'mutualnet', '--widths', '0.7', '1.0',
                '--input-sizes', '48', '40', '32', '--train-crop-size', '48',
                '--max-train-samples', '8', '--eval-widths', '1.0', '0.7',
                '--calib-batches', '1')
    ck, meta = _check_outputs(tmp_path, steps=2)
    assert {(r['width'], r['resolution']) for r in rows} == {(w, r) for w in (1.0, 0.7) for r in (48, 40, 32)}
    by = {(r['width'], r['resolution']): r['macs'] for r in rows}
    assert by[(1.0, 48)] > by[(1.0, 32)] and by[(1.0, 48)] > by[(0.7, 48)]
    text = open(os.path.join(tmp_path, 'eval.txt')).read()
    assert 'best configuration under a MACs budget' in text
    assert meta['widths'] == [0.7, 1.0] and meta['trained_resolutions'] == [48, 40, 32]


def test_rsnet(tiny, tmp_path):
    rows = _run(tiny, tmp_path, '--model', 'rs_resnet18', '--method', 'rsnet', '--bn-resolutions', '48', '32',
                '--max-train-samples', '8')
    ck, meta = _check_outputs(tmp_path, steps=2)
    assert [r['resolution'] for r in rows] == [48, 32, 'ensemble']
    assert rows[0]['macs'] > rows[1]['macs'] and rows[2]['macs'] == rows[0]['macs'] + rows[1]['macs']
    # issue 22: the RS-Nets README's multi-resolution ensemble row, weighted by this run's softmax(alpha)
    assert len(rows[2]['weights']) == 2 and abs(sum(rows[2]['weights']) - 1) < 1e-3 and 0 <= rows[2]['top1'] <= 100
    assert meta['resolutions'] == [48, 32]
    # the MRED ensemble weights alpha are trained and saved with the run (not with the backbone)
    assert 'criterion.alpha' in ck['model'] and not torch.equal(ck['model']['criterion.alpha'], torch.ones(2))
    assert not any('alpha' in k for k in torch.load(os.path.join(tmp_path, 'backbone.pth'),
                                                    weights_only=False)['state_dict'])


def test_sact(tiny, tmp_path):
    rows = _run(tiny, tmp_path, '--model', 'sact_resnet50', '--method', 'sact', '--max-train-samples', '8',
                '--tau', '0.01', '--label-smoothing', '0.1')
    ck, meta = _check_outputs(tmp_path, steps=2)
    r = rows[0]
    assert r['macs'] > 0 and r['macs_std'] >= 0 and r['ponder_cost'] > 0
    assert 'ponder_cost' in open(os.path.join(tmp_path, 'train_log.csv')).readline()


def test_method_family_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r'--method mutualnet needs a model with a width multiplier \(us_mobilenet_v1.*'
                                         r"'resnext50_elastic' is 'elastic'"):
        methods.check_method_model('mutualnet', 'resnext50_elastic')
    with pytest.raises(ValueError, match='ponder cost'):
        methods.check_method_model('sact', 'us_mobilenet_v1')
    with pytest.raises(ValueError, match='--method rsnet'):
        methods.check_method_model('standard', 'rs_resnet18')
    with pytest.raises(ValueError, match='standard'):
        methods.check_method_model('sandwich', 'us_mobilenet_v1')


# ---------------------------------------------------------------------- resume after SIGKILL
def _subprocess_args(tiny, out, *extra):
    return [sys.executable, SCRIPT, '--data-path', tiny, '--output-dir', str(out), *BASE, *extra]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    common = ['--model', 'us_mobilenet_v1', '--method', 'usnet', '--epochs', '2', '--max-train-samples', '16',
              '--ckpt-interval', '2', '--no-final-eval']
    ref_dir, run_dir = tmp_path / 'ref', tmp_path / 'run'
    ref = subprocess.run(_subprocess_args(tiny, ref_dir, *common), env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(_subprocess_args(tiny, run_dir, *common, '--iter-delay', '0.4'), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck_path = run_dir / 'last.pth'
    killed_at = None
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline:
            if ck_path.exists():
                st = torch.load(ck_path, map_location='cpu', weights_only=False)
                if st['consumed'] > 0 and st['epoch'] == 1:  # mid-epoch checkpoint of the second epoch
                    proc.send_signal(signal.SIGKILL)
                    killed_at = (st['epoch'], st['consumed'], st['global_step'])
                    break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    assert killed_at is not None, 'the run ended before a mid-epoch checkpoint could be interrupted'
    assert proc.returncode == -signal.SIGKILL
    res = subprocess.run(_subprocess_args(tiny, run_dir, *common, '--resume', 'auto'), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'micro-batch {killed_at[1]}/4' in res.stdout
    a = torch.load(ref_dir / 'last.pth', map_location='cpu', weights_only=False)
    b = torch.load(ck_path, map_location='cpu', weights_only=False)
    assert a['global_step'] == b['global_step'] == 2 * 4
    assert b['global_step'] > killed_at[2]
    for k in a['model']:
        torch.testing.assert_close(b['model'][k], a['model'][k], rtol=1e-5, atol=1e-6, msg=k)


def test_mid_epoch_resume_with_other_batch_size_is_refused(tiny, tmp_path):
    _run(tiny, tmp_path, *SMALL_ELASTIC, '--epochs', '1', '--max-train-samples', '16', '--ckpt-interval', '2',
         '--no-final-eval')
    ck = torch.load(tmp_path / 'last.pth', weights_only=False)
    ck['consumed'], ck['epoch'] = 2, 0
    torch.save(ck, tmp_path / 'mid.pth')
    with pytest.raises(ValueError, match='same settings'):
        _run(tiny, tmp_path / 'b', *SMALL_ELASTIC, '--epochs', '1', '--max-train-samples', '16',
             '--resume', str(tmp_path / 'mid.pth'), '--batch-size', '2')


# ---------------------------------------------------------------------- unreadable images
@pytest.fixture()
def broken(tmp_path):
    root = _make_folder(tmp_path / 'data', n_train=3, n_val=2)
    bad = os.path.join(root, 'train', 'c1', 'zz_truncated.jpg')
    with open(os.path.join(root, 'train', 'c1', '0.jpg'), 'rb') as f:
        head = f.read(200)
    with open(bad, 'wb') as f:
        f.write(head)
    return root, bad


def test_unreadable_image_skip_reports_path(broken, tmp_path, capfd):
    root, bad = broken
    # one batch holds all 13 files (12 readable + the truncated one)
    _run(root, tmp_path / 'out', *SMALL_ELASTIC, '--bad-images', 'skip', '--no-final-eval', '--batch-size', '13')
    err = capfd.readouterr().err
    assert bad in err and 'skipped' in err
    ck = torch.load(tmp_path / 'out' / 'last.pth', weights_only=False)
    assert ck['global_step'] == 1
    log = open(tmp_path / 'out' / 'log.txt').read()
    assert 'step 1 loss' in log


def test_unreadable_image_fail_names_path(broken, tmp_path):
    root, bad = broken
    with pytest.raises(pdata.UnreadableImageError, match='zz_truncated.jpg') as ei:
        _run(root, tmp_path / 'out', *SMALL_ELASTIC, '--bad-images', 'fail', '--batch-size', '13')
    assert '--bad-images skip' in str(ei.value) and bad in str(ei.value)


@pytest.mark.slow
def test_unreadable_image_fail_exits_2_on_the_command_line(broken, tmp_path):
    """A new ``python tools/pretrain.py`` process reports the unreadable file as an error with exit status 2, also
    through data-loader workers."""
    root, bad = broken
    res = subprocess.run([sys.executable, SCRIPT, '--data-path', root, '--output-dir', str(tmp_path / 'cli'), *BASE,
                          *SMALL_ELASTIC, '--bad-images', 'fail', '--workers', '1', '--batch-size', '13'],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 2 and bad in res.stderr


# ---------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_gloo_mutualnet_two_processes(tiny, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', SCRIPT,
           '--data-path', tiny, '--output-dir', str(out), *BASE, '--model', 'us_mobilenet_v1', '--method',
           'mutualnet', '--input-sizes', '40', '32', '--train-crop-size', '40',
           '--max-train-samples', '16', '--eval-widths', '1.0', '0.25',
           '--eval-resolutions', '32', '--calib-batches', '1', '--device', 'cpu']
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    text = res.stdout + res.stderr
    saves = [ln for ln in text.splitlines() if 'saved checkpoint' in ln]
    assert saves and all('[r0]' in ln for ln in saves)
    files = set(os.listdir(out)) - {'args.yaml'}  # written when PyYAML is installed
    assert files == {'args.json', 'log.txt', 'train_log.csv', 'summary.csv', 'last.pth', 'best.pth', 'eval.txt',
                     'eval.json', 'backbone.pth'}
    ck = torch.load(out / 'last.pth', weights_only=False)
    # 16 images / 2 processes / batch 4 = 2 steps; every rank's RNG state is kept for resume
    assert ck['world_size'] == 2 and ck['global_step'] == 2 and len(ck['rng']) == 2
    assert not any(k.startswith('module.') for k in ck['model'])
    rows = json.load(open(out / 'eval.json'))
    assert [(r['width'], r['resolution']) for r in rows] == [(1.0, 32), (0.25, 32)]
    assert rows[0]['n'] == 12  # every validation image counted once over the two shards


# ---------------------------------------------------------------------- helpers
def test_eval_points_parse_and_stay_inside_the_width_range(tiny, tmp_path):
    """``--eval-points w0.75-r32 ...`` replaces the final evaluation grid of a slimmable run; a misspelt point and a
    width outside the model's range are refused naming the spelling and the range."""
    assert pretrain.parse_eval_point('w0.75-r160') == (0.75, 160)
    assert pretrain.parse_eval_point('w1') == (1.0, None)
    with pytest.raises(SystemExit):
        pretrain.parse_args(['--data-path', tiny, '--model', 'us_mobilenet_v1', '--eval-points', '0.75x160'])
    common = ['--model', 'us_mobilenet_v1', '--method', 'usnet', '--max-train-samples', '8', '--calib-batches', '1',
              '--calib-batch-size', '2']
    rows = _run(tiny, tmp_path / 'ok', *common, '--eval-points', 'w0.25-r32', 'w1.0-r32')
    assert [(r['width'], r['resolution']) for r in rows] == [(0.25, 32), (1.0, 32)]
    assert all(r['calibrated'] for r in rows)
    with pytest.raises(ValueError, match=r'--eval-points widths \[0.1\] lie outside the model width range'):
        _run(tiny, tmp_path / 'bad', *common, '--eval-points', 'w0.1-r32')
    assert not (tmp_path / 'bad' / 'last.pth').exists()  # refused before training, not after it


@pytest.mark.parametrize('method, model', [('mutualnet', 'us_mobilenet_v2'), ('rsnet', 'rs_resnet18')])
def test_the_two_meanings_of_resolutions_have_their_own_flags(tmp_path, method, model):
    """``--input-sizes`` (MutualNet's student input sizes) and ``--bn-resolutions`` (RS-Net's private-BN
    resolutions) are the policies' own words; the old ``--resolutions`` is refused naming both."""
    with pytest.raises(ValueError, match='--input-sizes .*--bn-resolutions'):
        pretrain.parse_args(['--data-path', str(tmp_path), '--model', model, '--method', method,
                             '--resolutions', '64', '32'])
    flag = '--input-sizes' if method == 'mutualnet' else '--bn-resolutions'
    args = pretrain.parse_args(['--data-path', str(tmp_path), '--model', model, '--method', method, flag, '64', '32',
                                '--train-crop-size', '64'])
    assert (args.input_sizes if method == 'mutualnet' else args.bn_resolutions) == [64, 32]
    from backbones.capabilities import OptionNotApplicable
    other = '--bn-resolutions' if method == 'mutualnet' else '--input-sizes'
    with pytest.raises((OptionNotApplicable, ValueError), match=other):
        pretrain.parse_args(['--data-path', str(tmp_path), '--model', model, '--method', method, other, '64', '32',
                             '--train-crop-size', '64'])


def test_recipes_parse_and_explicit_flags_win(tmp_path):
    for name in recipes.RECIPES:
        args = pretrain.parse_args(['--recipe', name, '--data-path', str(tmp_path)])
        assert args.model in backbones.list_models()
        methods.check_method_model(args.method, args.model)
    args = pretrain.parse_args(['--recipe', 'mutualnet-mobilenetv2', '--data-path', str(tmp_path), '--lr', '0.2',
                                '--batch-size', '64'])
    assert args.lr == 0.2 and args.batch_size == 64 and args.epochs == 250 and args.nesterov
    assert args.widths == [0.7, 1.0] and args.input_sizes == [224, 192, 160, 128] and args.wd_policy == 'conv-fc'
    assert args.lr_schedule == 'cosine' and 'lr' in args.explicit_args and 'epochs' in args.recipe_args
    args = pretrain.parse_args(['--recipe', 'usnet-mobilenetv1', '--data-path', str(tmp_path), '--no-nesterov'])
    assert not args.nesterov and args.lr_schedule == 'linear' and args.batch_size == 1024
    args = pretrain.parse_args(['--recipe', 'rsnet-resnet50', '--data-path', str(tmp_path), '--accum-steps', '4'],
                               world_size=8)
    assert args.batch_size == 8 and args.effective_batch_size == 256 and args.wd_policy == 'all'
    with pytest.raises(ValueError, match='elastic-resnext50'):
        pretrain.parse_args(['--recipe', 'elastic-resnet50', '--data-path', str(tmp_path)])


def test_weight_decay_policies():
    model = backbones.create('us_mobilenet_v1', num_classes=10)
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(policy):
        g = optim.param_groups(model, 1e-4, policy)
        return {names[id(p)] for p in g[0]['params']}

    conv_fc = decayed('conv-fc')
    dw = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert conv_fc and not any(n.rsplit('.', 1)[0] in dw for n in conv_fc)
    assert all(n.endswith('weight') for n in conv_fc)
    assert not any(n.endswith('bias') for n in conv_fc) and 'head.2.weight' in conv_fc
    assert decayed('all') == set(names.values())
    nnb = decayed('no-norm-bias')
    assert not any(n.endswith('bias') for n in nnb) and conv_fc < nnb  # depthwise weights decay here
    with pytest.raises(ValueError, match='conv-fc'):
        optim.param_groups(model, 1e-4, 'bn')


def test_lr_schedules():
    f = optim.lr_factor_fn('cosine', 100, 10, warmup_steps=10, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    f = optim.lr_factor_fn('linear', 100, 10)
    assert f(25) == pytest.approx(0.75) and f(100) == pytest.approx(0.0)
    f = optim.lr_factor_fn('step', 100, 10, step_epochs=3, gamma=0.1)
    assert f(29) == pytest.approx(1.0) and f(30) == pytest.approx(0.1) and f(60) == pytest.approx(0.01)
    f = optim.lr_factor_fn('step', 100, 10, milestones=[2, 5], gamma=0.5)
    assert f(19) == 1.0 and f(20) == 0.5 and f(55) == 0.25
    with pytest.raises(ValueError, match='cosine'):
        optim.lr_factor_fn('poly', 10, 1)


def test_shared_crop_and_deterministic_augmentation(tiny):
    class A:
        crop_scale_min, interpolation, hflip, color_jitter, lighting, train_crop_size = 0.3, 'bilinear', 0.0, 0, 0, 32
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    tf = pdata.build_train_transform(A, mean, std, resolutions=[64, 32])
    ds = pdata.RobustImageFolder(os.path.join(tiny, 'train'), tf, seed=7)
    (x64, x32), _ = ds[(3, 0)]
    assert x64.shape == (3, 64, 64) and x32.shape == (3, 32, 32)
    # the 32 px input is the same crop as the 64 px one (not a second random crop)
    down = torch.nn.functional.interpolate(x64[None], size=32, mode='bilinear', antialias=True)[0]
    other = ds[(3, 5)][0][1]
    assert (down - x32).abs().mean() < 0.5 * (other - x32).abs().mean()
    again = ds[(3, 0)][0]
    assert torch.equal(again[0], x64)  # a sample's augmentation is a function of (seed, epoch, index)
    state = torch.get_rng_state()
    ds[(4, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # ...and leaves the caller's RNG alone


def test_resumable_sampler_shards_and_skips(tiny):
    ds = pdata.RobustImageFolder(os.path.join(tiny, 'train'), None)
    full = pdata.ResumableSampler(ds, seed=3)
    full.set_epoch(2)
    order = [i for i, _ in full]
    assert sorted(order) == list(range(len(ds)))
    full.set_epoch(2, start=10)
    assert [i for i, e in full] == order[10:] and len(full) == len(ds) - 10
    r0, r1 = (pdata.ResumableSampler(ds, 2, r, seed=3) for r in (0, 1))
    for s in (r0, r1):
        s.set_epoch(1)
    a, b = [i for i, _ in r0], [i for i, _ in r1]
    assert not set(a) & set(b) and len(a) == len(b) == len(ds) // 2


def test_imagenette_slice(shared_dir, tmp_path):
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isdir(os.path.join(root, 'train')):
        pytest.skip(f'imagenette is not in {root}')
    rows = pretrain.main(['--data-path', root, '--output-dir', str(tmp_path), '--model', 'rs_resnet18', '--method',
                          'rsnet', '--bn-resolutions', '64', '48', '--train-crop-size', '64', '--val-resize-size', '73',
                          '--val-crop-size', '64', '--epochs', '1', '--batch-size', '8', '--max-train-samples', '16',
                          '--max-val-samples', '16', '--workers', '1', '--no-tensorboard', '--log-interval', '1'])
    assert [r['resolution'] for r in rows] == [64, 48, 'ensemble'] and rows[0]['n'] == 16
    ck, meta = _check_outputs(tmp_path, steps=2)
    assert meta['num_classes_pretrain'] == 10


# ------------------------------------------------------------------------------------ --pretrained
def _imagenette_slice(shared_dir):
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isfile(os.path.join(root, 'classes.txt')):
        pytest.skip(f'Imagenette missing: expected {root}/classes.txt')
    return root


def _official(name, folder):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from official_files import MANIFEST_DIR, write_official
    if not os.path.isdir(MANIFEST_DIR):
        pytest.skip(f'the official checkpoint manifests are missing: {MANIFEST_DIR}')
    return write_official(name, os.path.join(str(folder), name + '.pth.tar'))[0]


EVAL = ['--workers', '0', '--batch-size', '4', '--max-val-samples', '8', '--max-train-samples', '8',
        '--no-tensorboard', '--evaluate']


@pytest.mark.slow
def test_evaluate_pretrained_usnet_uses_stored_statistics_per_width(shared_dir, tmp_path):
    path = _official('us_mobilenet_v2', tmp_path)
    rows = pretrain.main(['--data-path', _imagenette_slice(shared_dir), '--output-dir', str(tmp_path / 'ev'),
                          '--pretrained', path, *EVAL])
    assert [r['width'] for r in rows] == sorted([round(0.35 + 0.025 * i, 4) for i in range(27)], reverse=True)
    assert all(not r['calibrated'] and r['resolution'] == 224 for r in rows)
    assert rows[0]['macs'] == pytest.approx(300.8e6, rel=1e-3)
    with open(os.path.join(tmp_path, 'ev', 'log.txt')) as f:
        log = f.read()
    assert 'mapped to their ImageNet-1k indices' in log and 'protocol' not in log  # protocol is printed to stdout


@pytest.mark.slow
def test_evaluate_pretrained_mutualnet_recalibrates_every_point(shared_dir, tmp_path):
    path = _official('mutualnet_mobilenet_v1', tmp_path)
    argv = ['--data-path', _imagenette_slice(shared_dir), '--output-dir', str(tmp_path / 'ev'), '--pretrained', path,
            *EVAL, '--calib-batches', '1']
    args = pretrain.parse_args(argv)
    # the authors' ComputePostBN: batches of 1024 training images; the points of the model-zoo row by default
    assert (args.calib_batch_size, args.calib_batches) == (1024, 1)
    assert args.eval_points == [(1.0, 224), (1.0, 192), (0.5, 160), (0.25, 128)]
    rows = pretrain.main(argv)
    assert [(r['width'], r['resolution']) for r in rows] == [(1.0, 224), (1.0, 192), (0.5, 160), (0.25, 128)]
    assert all(r['calibrated'] for r in rows)
    smallest = [r['macs'] for r in rows if (r['width'], r['resolution']) == (0.25, 128)]
    assert smallest == [pytest.approx(13.6e6, rel=5e-3)]  # MutualNet README: 13 MFLOPs at 0.25-128
    with open(os.path.join(tmp_path, 'ev', 'log.txt')) as f:
        assert 'fewer than one calibration batch of 1024' in f.read()  # 8 training images here
    # explicit flags win: a grid of widths x resolutions, batches of --calib-batch-size
    args = pretrain.parse_args(argv + ['--eval-widths', '1.0', '0.25', '--calib-batch-size', '4'])
    assert args.eval_points is None and args.calib_batch_size == 4


@pytest.mark.slow
def test_evaluate_pretrained_rsnet_feeds_unnormalised_inputs(shared_dir, tmp_path):
    path = _official('parallel_resnet18', tmp_path)
    argv = ['--data-path', _imagenette_slice(shared_dir), '--output-dir', str(tmp_path / 'ev'), '--pretrained', path,
            *EVAL]
    args = pretrain.parse_args(argv)
    assert args.method == 'rsnet' and args.model == 'rs_resnet18' and args.bn_resolutions == [224, 192, 160, 128, 96]
    rows = pretrain.main(argv)
    assert [r['resolution'] for r in rows] == [224, 192, 160, 128, 96, 'ensemble']
    from backbones.pretrained import read_source
    alpha = torch.tensor([float(a) for a in read_source(path).state_dict['module.alpha']])
    assert rows[-1]['weights'] == pytest.approx(torch.softmax(alpha, 0).tolist(), abs=1e-4)  # the file's alpha
    with open(os.path.join(tmp_path, 'ev', 'log.txt')) as f:
        assert 'inputs (0.0, 0.0, 0.0) / (1.0, 1.0, 1.0)' in f.read()


def test_evaluate_refuses_a_classifier_it_would_have_to_replace(tiny, tmp_path):
    path = _official('parallel_resnet18', tmp_path)
    with pytest.raises(ValueError, match='1000 classes but .* has 4 class folders'):
        pretrain.main(['--data-path', tiny, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL])


def test_transfer_learning_from_converted_mutualnet_weights(tiny, tmp_path):
    import convert_weights
    conv = str(tmp_path / 'mn1.pth')
    assert convert_weights.main([_official('mutualnet_mobilenet_v1', tmp_path), conv]) == 0
    rows = _run(tiny, tmp_path / 'ft', '--pretrained', conv, '--input-sizes', '40', '32', '--train-crop-size', '40',
                '--calib-batches', '1')
    src = torch.load(conv, map_location='cpu', weights_only=True)['state_dict']
    ck = torch.load(os.path.join(tmp_path, 'ft', 'last.pth'), map_location='cpu', weights_only=False)
    assert ck['args']['method'] == 'mutualnet' and ck['args']['model'] == 'us_mobilenet_v1'
    assert ck['model']['model.head.2.weight'].shape == (4, 1024)  # a new classifier for the 4 classes
    assert src['head.2.weight'].shape == (1000, 1024)
    assert {(r['width'], r['resolution']) for r in rows} == {(w, r) for w in (1.0, 0.25) for r in (40, 32)}


def test_resume_refuses_a_checkpoint_of_another_model(tiny, tmp_path):
    """Issue 19: --resume loads strictly and lists the unmatched keys; --non-strict is the logged opt-out."""
    from backbones.checkpoint import CheckpointMismatchError
    _run(tiny, tmp_path / 'a', *SMALL_ELASTIC, '--no-final-eval')
    other = ['--model', 'resnext50_elastic', '--model-kwargs', '{"cardinality": 8, "base_width": 4}']
    with pytest.raises(CheckpointMismatchError, match=r'shape-mismatched \[.*file .* model .*--non-strict'):
        _run(tiny, tmp_path / 'b', *other, '--resume', str(tmp_path / 'a' / 'last.pth'), '--no-final-eval')


def test_nonfinite_batch_stops_naming_its_files_and_keeps_the_checkpoint(tiny, tmp_path, monkeypatch):
    """Issue 19: an inf pixel stops the run with the iteration and the batch's files, before any checkpoint of that
    step is written; --skip-nonfinite skips such steps (BN statistics restored) and finishes."""
    from backbones.training.nonfinite import NonFiniteStepError
    out = tmp_path / 'run'
    _run(tiny, out, *SMALL_ELASTIC, '--no-final-eval')
    before = (out / 'last.pth').read_bytes()
    bad = os.path.join(tiny, 'train', 'c1', '2.jpg')
    get = pdata.RobustImageFolder.__getitem__

    def poisoned(self, key):
        img, target = get(self, key)
        index = key[0] if isinstance(key, (tuple, list)) else key
        if self.samples[index][0] == bad and torch.is_tensor(img):
            img = img.clone()
            img[0, 0, 0] = float('inf')
        return img, target
    monkeypatch.setattr(pdata.RobustImageFolder, '__getitem__', poisoned)
    with pytest.raises(NonFiniteStepError, match=r'non-finite .* at iteration \d+; batch files: \[.*c1/2\.jpg'):
        _run(tiny, out, *SMALL_ELASTIC, '--epochs', '2', '--resume', 'auto', '--no-final-eval')
    assert (out / 'last.pth').read_bytes() == before  # the last good checkpoint is untouched
    _run(tiny, tmp_path / 'skip', *SMALL_ELASTIC, '--no-final-eval', '--skip-nonfinite')
    log = (tmp_path / 'skip' / 'log.txt').read_text()
    assert log.count('--skip-nonfinite: step skipped') == 1 and 'c1/2.jpg' in log
    model = torch.load(tmp_path / 'skip' / 'last.pth', weights_only=False)['model']
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize('model_args', [SMALL_ELASTIC,
                                        ['--model', 'us_mobilenet_v1', '--method', 'mutualnet', '--input-sizes', '40',
                                         '32', '--train-crop-size', '40',
                                         '--eval-widths', '1.0', '0.25', '--eval-resolutions', '32',
                                         '--calib-batches', '2']],
                         ids=['standard', 'mutualnet-calibrated'])
def test_two_ranks_report_the_metric_of_one(tiny, tmp_path, model_args):
    """Issue 19: the same checkpoint evaluated by one process and by two gloo processes gives the same top-1 / top-5
    over the same images (to 1e-6)."""
    _run(tiny, tmp_path / 'train', *model_args, '--no-final-eval')
    ckpt = str(tmp_path / 'train' / 'last.pth')
    common = ['--data-path', tiny, *BASE, *model_args, '--evaluate', '--resume', ckpt, '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    pretrain.main(['--output-dir', str(tmp_path / 'one'), *common])  # one process: this one (no torch start-up)
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', SCRIPT,
                          '--output-dir', str(tmp_path / 'two'), *common], capture_output=True, text=True,
                         timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    rows1 = json.load(open(tmp_path / 'one' / 'eval.json'))
    rows2 = json.load(open(tmp_path / 'two' / 'eval.json'))
    assert len(rows1) == len(rows2) > 0
    for a, b in zip(rows1, rows2):
        assert a['n'] == b['n'] == 12
        for k in ('top1', 'top5'):
            assert abs(a[k] - b[k]) <= 1e-6, (k, a, b)


def test_rsnet_validation_resize_side_is_truncated_as_the_authors_do():
    """Issue 22: RS-Nets evaluate each resolution s with Resize(int(s / 0.875)) -> CenterCrop(s) (182 at 160, 109 at
    96; rounding gave 183 and 110)."""
    from pretrain_lib import data as pdata
    tf = pdata.MultiResolutionVal([224, 192, 160, 128, 96], 224 / 256, 'bilinear', (0.5,) * 3, (0.5,) * 3)
    assert [t.transforms[0].size for t in tf.tfs] == [256, 219, 182, 146, 109]
    from PIL import Image
    outs = tf(Image.new('RGB', (300, 200)))
    assert [tuple(o.shape[-2:]) for o in outs] == [(s, s) for s in (224, 192, 160, 128, 96)]


# ------------------------------------------------------------------ --evaluate: each origin's inputs and logits
def _imagenette_val_images(root):
    """Every image of the Imagenette val split as an RGB PIL image, in ImageFolder order."""
    from PIL import Image
    from torchvision.datasets import ImageFolder
    return [Image.open(p).convert('RGB') for p, _ in ImageFolder(os.path.join(root, 'val')).samples]


def _evaluate_capturing(argv, monkeypatch, batches=False):
    """Run ``tools/pretrain.py --evaluate`` in this process, capturing the ``(input, logits)`` of every evaluated
    image (a forward hook on the model ``backbones.create`` returns); returns ``(rows, inputs, logits)``, or with
    ``batches`` ``(rows, [(inputs, logits), ...])`` per forward (resolutions differ).  The all-zero dummy input the
    MACs count runs and the training-mode forwards of BN calibration are left out."""
    seen = []
    create = backbones.create

    def hook(m, inp, out):
        calibrating = any(b.training for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm))
        if inp[0].abs().sum() > 0 and not calibrating:  # not the MACs dummy, not a BN calibration batch
            seen.append((inp[0].detach().clone(), out.detach().clone()))

    def create_and_hook(*a, **k):
        model = create(*a, **k)
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(backbones, 'create', create_and_hook)
    rows = pretrain.main(argv)
    monkeypatch.setattr(backbones, 'create', create)
    if batches:
        return rows, seen
    return rows, torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])


def _check_against_reference(inputs, logits, reference_inputs, reference_model, rtol=1e-4):
    """Each evaluated input equals (exactly) one input of the origin's preprocessing ``[M, 3, H, W]``; the logits
    equal ``reference_model``'s on it."""
    flat = reference_inputs.flatten(1)
    for x, y in zip(inputs, logits):
        hits = (flat == x.flatten()).all(1).nonzero().flatten().tolist()
        assert hits, 'an evaluated input differs from every input of the origin\'s preprocessing'
        with torch.no_grad():
            ref = reference_model(reference_inputs[hits[0]:hits[0] + 1])[0]
        torch.testing.assert_close(y, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


@pytest.mark.slow
def test_evaluate_timm_file_uses_its_pretrained_cfg(shared_dir, tmp_path, monkeypatch):
    """timm ``resnetv2_50.a1h_in1k``: bicubic Resize 235 -> CenterCrop 224, mean = std = 0.5 -- the inputs timm's
    own ``create_transform(resolve_data_config(model))`` makes, and the logits of timm's own model."""
    timm = pytest.importorskip('timm', reason='timm not installed (the dev extra)')
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config
    root = _imagenette_slice(shared_dir)
    torch.manual_seed(0)
    ref = timm.create_model('resnetv2_50.a1h_in1k', pretrained=False).eval()
    path = str(tmp_path / 'resnetv2_50.a1h_in1k.safetensors')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '4']
    args = pretrain.parse_args(argv)
    assert (args.interpolation, args.val_resize_size, args.val_crop_size) == ('bicubic', 235, 224)
    rows, inputs, logits = _evaluate_capturing(argv, monkeypatch)
    assert len(rows) == 1 and inputs.shape == (4, 3, 224, 224)
    tf = create_transform(**resolve_data_config({}, model=ref))
    reference = torch.stack([tf(im) for im in _imagenette_val_images(root)])
    _check_against_reference(inputs, logits, reference, ref)


@pytest.mark.slow
def test_evaluate_torchvision_file_uses_its_weights_transforms(shared_dir, tmp_path, monkeypatch):
    """torchvision ``resnext50_32x4d`` IMAGENET1K_V1: the inputs of the weights' own ``transforms()`` (bilinear
    Resize 256 -> CenterCrop 224, ImageNet mean/std) and the logits of torchvision's own model."""
    import torchvision
    root = _imagenette_slice(shared_dir)
    torch.manual_seed(0)
    ref = torchvision.models.resnext50_32x4d().eval()
    path = str(tmp_path / 'resnext50_32x4d-7cdf4587.pth')
    torch.save(ref.state_dict(), path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '4']
    rows, inputs, logits = _evaluate_capturing(argv, monkeypatch)
    assert len(rows) == 1 and inputs.shape == (4, 3, 224, 224)
    tf = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1.transforms()
    reference = torch.stack([tf(im) for im in _imagenette_val_images(root)])
    _check_against_reference(inputs, logits, reference, ref)


@pytest.mark.slow
def test_evaluate_elastic_release_uses_the_authors_steps(shared_dir, tmp_path, monkeypatch):
    """allenai/elastic ``resnext50_elastic``: its README's evaluation written out -- Resize(256) (bilinear) ->
    CenterCrop(224) -> ToTensor -> Normalize(ImageNet mean/std) -- gives exactly the evaluated inputs; the logits
    are the model's on them (one BN per layer: nothing to choose)."""
    from torchvision import transforms
    root = _imagenette_slice(shared_dir)
    path = _official('resnext50_elastic', tmp_path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '4']
    rows, inputs, logits = _evaluate_capturing(argv, monkeypatch)
    assert len(rows) == 1 and inputs.shape == (4, 3, 224, 224)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    reference = torch.stack([tf(im) for im in _imagenette_val_images(root)])
    model = backbones.create('resnext50_elastic', pretrained=path).eval()
    _check_against_reference(inputs, logits, reference, model)


@pytest.mark.slow
def test_evaluate_rsnets_release_feeds_each_resolution_its_own_inputs_and_bn(shared_dir, tmp_path, monkeypatch):
    """yikaiw/RS-Nets ``parallel_resnet18``: per resolution s, its validate steps written out -- Resize(int(s /
    0.875)) -> CenterCrop(s) -> ToTensor, no Normalize -- give exactly the evaluated inputs, and the logits are
    those of the private BN of s."""
    from torchvision import transforms
    root = _imagenette_slice(shared_dir)
    path = _official('parallel_resnet18', tmp_path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '2']
    rows, seen = _evaluate_capturing(argv, monkeypatch, batches=True)
    model = backbones.create('rs_resnet18', pretrained=path).eval()
    images = _imagenette_val_images(root)
    sizes = sorted({x.shape[-1] for x, _ in seen}, reverse=True)
    assert sizes == [224, 192, 160, 128, 96]
    for s in sizes:
        tf = transforms.Compose([transforms.Resize(int(s / 0.875)), transforms.CenterCrop(s), transforms.ToTensor()])
        reference = torch.stack([tf(im) for im in images])
        model.set_resolution(s)
        for x, y in seen:
            if x.shape[-1] == s:
                _check_against_reference(x, y, reference, model)


@pytest.mark.slow
def test_evaluate_usnets_release_uses_the_stored_statistics_of_each_width(shared_dir, tmp_path, monkeypatch):
    """JiahuiYu/slimmable_networks ``us_mobilenet_v2``: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize
    (ImageNet) as its test_only transform, at each stored width with that width's stored BN statistics."""
    from torchvision import transforms
    root = _imagenette_slice(shared_dir)
    path = _official('us_mobilenet_v2', tmp_path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '2', '--eval-widths', '1.0', '0.35']
    rows, seen = _evaluate_capturing(argv, monkeypatch, batches=True)
    assert [r['width'] for r in rows] == [1.0, 0.35] and len(seen) == 2
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    reference = torch.stack([tf(im) for im in _imagenette_val_images(root)])
    model = backbones.create('us_mobilenet_v2', pretrained=path).eval()
    for (x, y), width in zip(seen, (1.0, 0.35)):
        with model.width_context(width):
            _check_against_reference(x, y, reference, model)


@pytest.mark.slow
def test_evaluate_mutualnet_release_resizes_the_224_crop_to_each_point(shared_dir, tmp_path, monkeypatch):
    """taoyang1122/MutualNet ``mutualnet_mobilenet_v1``: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize,
    then the 224 crop resized to r with bilinear ``align_corners=True`` (its test loop), at the zoo row's points.
    The logits depend on the BN statistics recalibrated inside the run, so only the inputs are compared here
    (test_evaluate_pretrained_mutualnet_recalibrates_every_point checks the calibration)."""
    import torch.nn.functional as F
    from torchvision import transforms
    root = _imagenette_slice(shared_dir)
    path = _official('mutualnet_mobilenet_v1', tmp_path)
    argv = ['--data-path', root, '--output-dir', str(tmp_path / 'ev'), '--pretrained', path, *EVAL,
            '--max-val-samples', '2', '--calib-batches', '1']
    rows, seen = _evaluate_capturing(argv, monkeypatch, batches=True)
    points = [(r['width'], r['resolution']) for r in rows]
    assert points == [(1.0, 224), (1.0, 192), (0.5, 160), (0.25, 128)] and len(seen) == len(points)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    crops = torch.stack([tf(im) for im in _imagenette_val_images(root)])
    for (x, _), (_, r) in zip(seen, points):
        reference = crops if r == 224 else F.interpolate(crops, size=(r, r), mode='bilinear', align_corners=True)
        flat = reference.flatten(1)
        for xi in x:
            assert (flat == xi.flatten()).all(1).any(), f'an input at {r} px differs from the reference'


def test_method_that_cannot_train_the_model_is_refused_when_parsing(tmp_path):
    """A method's own capabilities (calibration for the sandwich rule) make its flags apply, but the method must
    still fit the model: refused by ``parse_args``, before the trainer writes anything."""
    with pytest.raises(ValueError, match='--method usnet needs a model with a width multiplier'):
        pretrain.parse_args(['--data-path', str(tmp_path), '--model', 'resnext50_elastic', '--method', 'usnet',
                             '--calib-batches', '3'])
    assert not any(tmp_path.iterdir())

"""The dynamic-training core (backbones.training): policies, post-statistics BN, agreement of DDP ranks in every
frontend, and the rule that the frontends drive the methods only through it."""
import ast
import glob
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import backbones
from backbones import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sandwich_policy_draws_are_a_function_of_seed_and_step():
    p = training.SandwichPolicy((0.25, 1.0), num_subnets=4, input_sizes=(224, 192, 160, 128), seed=7)
    q = training.SandwichPolicy((0.25, 1.0), num_subnets=4, input_sizes=(224, 192, 160, 128), seed=7)
    assert [p.subnets(s) for s in range(20)] == [q.subnets(s) for s in range(20)]
    steps = [p.subnets(s) for s in range(50)]
    assert len({tuple(x.width for x in st) for st in steps}) > 40  # the draws change from step to step
    for st in steps:
        assert [x.tag for x in st] == ['max', 'min', 'rand1', 'rand2']
        assert st[0].width == 1.0 and st[0].teacher and st[0].input_size is None and st[0].gt_weight == 1.0
        assert st[1].width == 0.25 and all(x.distill_weight == 1.0 and x.gt_weight == 0.0 for x in st[1:])
    assert {x.input_size for st in steps for x in st[1:]} == {None, 192, 160, 128}  # 224 = as loaded
    det = training.SandwichPolicy((0.25, 1.0), distill=None, student_gt_weight=1.0, seed=1)
    assert all(x.gt_weight == 1.0 and x.distill_weight == 0.0 for x in det.subnets(0))
    with pytest.raises(ValueError, match='num_subnets'):
        training.SandwichPolicy((0.25, 1.0), num_subnets=1)


def test_subnet_losses_weight_the_task_and_add_inplace_distillation():
    p = training.SandwichPolicy((0.25, 1.0), seed=0)
    teacher, student = p.subnets(0)[:2]
    logits_t, logits_s = torch.randn(4, 10), torch.randn(4, 10, requires_grad=True)
    out = p.subnet_losses(teacher, {'loss_ce': torch.tensor(2.0), 'acc': torch.tensor(50.0)}, logits_t)
    assert set(out) == {'loss_ce', 'acc'} and float(out['loss_ce']) == 2.0
    out = p.subnet_losses(student, {'loss_ce': torch.tensor(2.0), 'acc': torch.tensor(50.0)}, logits_s, logits_t)
    assert 'loss_ce' not in out and out['acc'] == 50.0  # gt weight 0 for students under inplace distillation
    ref = torch.nn.functional.kl_div(logits_s.log_softmax(1), logits_t.softmax(1), reduction='batchmean')
    torch.testing.assert_close(out['loss_distill'], ref)
    out['loss_distill'].backward()
    assert logits_s.grad is not None


def test_resolution_policy_and_mred_combine():
    p = training.ResolutionPolicy((224, 160, 96), seed=0)
    subs = p.subnets(3)
    expected = [('r224', 224, None), ('r160', 160, 160), ('r96', 96, 96)]
    assert [(s.tag, s.bn_resolution, s.input_size) for s in subs] == expected
    out = p.combine([torch.randn(4, 5) for _ in range(3)], torch.randint(0, 5, (4,)))
    assert out['loss_mred'].dim() == 0 and 'mred_kd' in out and 'mred_w_0' in out
    assert isinstance(p.mred, nn.Module) and p.mred.alpha.shape == (3,)
    rnd = training.ResolutionPolicy((224, 160, 96), mode='random', mred=False, seed=0)
    assert all(len(rnd.subnets(s)) == 1 for s in range(10))
    assert len({rnd.subnets(s)[0].bn_resolution for s in range(30)}) == 3
    with pytest.raises(ValueError, match='MRED'):
        training.ResolutionPolicy((224, 160), mode='random')
    model = backbones.create('rs_resnet18', num_classes=0, resolutions=(224, 160, 96))
    with p.context(model, subs[1]):
        assert model.resolution == 160


def test_ponder_policy_collects_every_sact_module_once():
    model = backbones.create('sact_resnet50', num_classes=5)
    policy = training.PonderPolicy(0.5)
    model(torch.randn(2, 3, 64, 64))
    wrapper = nn.Module()
    wrapper.net = model
    wrapper.ponder_costs = list(model.ponder_costs)  # a frontend wrapper repeating the same tensors
    out = policy.extra_losses(wrapper)
    cost = sum(c.mean() for c in model.ponder_costs)
    torch.testing.assert_close(out['ponder_cost'], cost.detach())
    torch.testing.assert_close(out['loss_ponder'], 0.5 * cost)
    assert training.PonderPolicy(0.5).find_unused_parameters
    with pytest.raises(ValueError, match='tau'):
        training.PonderPolicy(-1)


def test_calibrate_is_the_exact_average_and_restores_the_model():
    torch.manual_seed(0)
    model = backbones.create('us_mobilenet_v1', num_classes=3)
    model.train()
    batches = [torch.randn(2, 3, 40, 40) for _ in range(3)]
    n = training.calibrate(model, batches, width=0.5, bn_resolution=40)
    assert n == 3 and model.training and model.width == 1.0
    assert (0.5, 40) in model.bn_configs
    # the same statistics by a direct computation: forward the batches and average mean / unbiased variance
    stem_bn = model.stem[0][1]
    acts = []
    h = model.stem[0][0].register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad(), model.width_context(0.5, 40):
        model.eval()
        for x in batches:
            model(x)
    h.remove()
    means = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    var = torch.stack([a.var((0, 2, 3), unbiased=True) for a in acts]).mean(0)
    stats = stem_bn.private['w0p5_r40']
    torch.testing.assert_close(stats.running_mean, means)
    torch.testing.assert_close(stats.running_var, var, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='no batch'):
        training.calibrate(model, [], width=0.5)
    with pytest.raises(ValueError, match='slimmable backbone'):
        training.calibrate(backbones.create('rs_resnet18'), batches)


def test_the_frontends_drive_the_methods_only_through_the_core():
    """No frontend samples sandwich widths, computes MRED / inplace distillation / ponder loss, or resets BN
    statistics itself: the names below appear in backbones/ only; each frontend imports backbones.training."""
    frontends = sorted(glob.glob(os.path.join(ROOT, 'plugins', '**', '*.py'), recursive=True)
                       + glob.glob(os.path.join(ROOT, 'tools', '**', '*.py'), recursive=True))
    frontends = [p for p in frontends if not os.path.basename(p).startswith('make_synthetic')]  # data generators
    forbidden = {'inplace_distillation_loss', 'mred_loss', 'MREDLoss', 'ponder_loss', 'calibrate_bn',
                 'reset_running_stats', 'mred_kd_weight', 'uniform', 'Random'}
    offenders = []
    for path in frontends:
        with open(path) as f:
            tree = ast.parse(f.read())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        bad = names & forbidden
        if bad:
            offenders.append((os.path.relpath(path, ROOT), sorted(bad)))
    assert not offenders, offenders
    drivers = ['plugins/mm/segmentors.py', 'plugins/mm/detectors.py', 'plugins/mm/hooks.py',
               'plugins/detectron2/trainer.py', 'plugins/detectron2/policy.py', 'tools/pretrain_lib/methods.py']
    for rel in drivers:
        with open(os.path.join(ROOT, rel)) as f:
            text = f.read()
        assert 'backbones import training' in text or 'from backbones.training' in text, rel


FRONTENDS = ['core', 'pretrain', 'mmseg', 'mmdet', 'detectron2']
#: the package a frontend needs, and the reason named when it is missing
_FRONTEND_NEEDS = {'mmseg': ('mmseg', 'mmseg (the mm extra) is not installed'),
                   'mmdet': ('mmdet', 'mmdet (the mm extra) is not installed'),
                   'detectron2': ('detectron2', 'detectron2 not installed: build it from source per '
                                  'https://detectron2.readthedocs.io/en/latest/tutorials/install.html')}


def _frontend_installed(frontend):
    import importlib.util
    need = _FRONTEND_NEEDS.get(frontend)
    return need is None or importlib.util.find_spec(need[0]) is not None


@pytest.fixture(scope='session')
def ddp_agreement_run(tmp_path_factory):
    """One run of tests/ddp_agreement.py over every installed frontend: two processes started once (each frontend
    in its own process pair cost ~10 s of start-up, torch and the frameworks imported again); returns the output
    folder and the run's output.  Under pytest-xdist the workers share it through a file lock in their common
    base folder (pytest-xdist's recipe for a session fixture run once; ``--dist loadgroup`` does not group tests
    under pytest 9.2, pytest-dev/pytest-xdist#1386)."""
    from filelock import FileLock  # a dependency of torch
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        root = root.parent  # the run's folder, above each worker's own
    out = root / 'ddp_agreement'
    with FileLock(str(root / 'ddp_agreement.lock')):
        if not (out / 'log.txt').exists():
            out.mkdir(exist_ok=True)
            env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from test_pretrain import _make_folder
            env['DDP_TINY'] = _make_folder(out / 'tiny', n_train=4, n_val=2, size=36)
            frontends = [f for f in FRONTENDS if _frontend_installed(f)]
            r = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'ddp_agreement.py'), ','.join(frontends),
                                str(out)], env=env, capture_output=True, text=True, timeout=900)
            (out / 'log.txt').write_text(f'exit status {r.returncode}\n' + r.stdout[-3000:] + r.stderr[-5000:])
    return out, (out / 'log.txt').read_text()


@pytest.mark.slow
@pytest.mark.parametrize('frontend', FRONTENDS)
def test_two_ddp_ranks_draw_the_same_subnets_and_hold_the_same_bn_statistics(frontend, ddp_agreement_run):
    if not _frontend_installed(frontend):
        pytest.skip(_FRONTEND_NEEDS[frontend][1])
    out, log = ddp_agreement_run
    if (out / f'{frontend}.error').exists():
        pytest.fail(f'the {frontend} frontend failed under DDP:\n' + (out / f'{frontend}.error').read_text()[-5000:])
    files = [out / f'{frontend}.rank{i}.pt' for i in (0, 1)]
    assert all(f.exists() for f in files), f'{frontend}: not run (an earlier frontend stopped the run?)\n{log}'
    a, b = (torch.load(f, weights_only=False) for f in files)
    assert a['subnets'] == b['subnets']
    assert len({str(s) for s in a['subnets']}) > 1 or frontend == 'detectron2'
    assert a['stats'] and a['stats'].keys() == b['stats'].keys()
    for k in a['stats']:
        torch.testing.assert_close(a['stats'][k], b['stats'][k], msg=k)
    # the ranks calibrated on different images: the agreed statistics are not one rank's own
    assert any(float(v.abs().sum()) > 0 for v in a['stats'].values())

"""One training step and one evaluation protocol per ``--method``.

The method maths and its step logic (which sub-networks, their losses, post-statistics BN) live in the
training core :mod:`backbones.training` (one policy per method, shared with the MMSeg, MMDet and Detectron2
frontends); this module only runs the policy's sub-networks through the classifier with the engine's
forward/backward passes (DDP ``no_sync``, AMP, gradient accumulation):

* ``standard``: cross-entropy (Elastic and the plain baselines; Wang et al. 2019).
* ``usnet``: sandwich rule (max, min and n-2 random widths), inplace distillation from the max width
  (Yu & Huang 2019, Sec. 3.3-3.4); every sub-network does its own forward and backward on the same
  batch, the gradients accumulate, one optimizer step.
* ``mutualnet``: as ``usnet`` with each non-teacher sub-network's input resolution drawn from the
  resolution list; the full width always sees the full resolution; the other resolutions are the same
  crop resized with bilinear ``align_corners=True`` (Yang et al. 2020, Sec. 3.2; reference 3.2).
* ``rsnet``: all resolutions in parallel through ``forward_parallel`` (private BN per resolution),
  MRED loss with learned ensemble weights alpha (Wang et al. 2020, Sec. 3.2-3.3).
* ``sact``: cross-entropy (label smoothing) + tau * ponder cost (Figurnov et al. 2017, eq. 8).

Each method also describes its evaluation points and how to select one (``eval_points``, ``point_context``,
``macs``); running them is :mod:`pretrain_lib.evaluation`.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones import training
from backbones.capabilities import CAPABILITIES, capabilities, models_with
from backbones.complexity import complexity


def methods():
    """Names ``--method`` accepts: every method of the training core (:data:`backbones.training.POLICIES`)."""
    return tuple(training.POLICIES)


def check_method_model(method, model_name):
    """Raise ValueError when ``method`` cannot train the registered model ``model_name``.

    A method needs the backbone capability its policy names (:func:`backbones.training.capability_of`: the
    sandwich rule a width multiplier, RS-Nets private BN, SACT a ponder cost; any method registered later the
    same way); ``standard`` trains any model except one with private BN per resolution (RS-Net: its private BNs
    need the parallel multi-resolution step, ``--method rsnet``).
    """
    if method not in training.POLICIES:
        raise ValueError(f'--method must be one of {methods()}, got {method!r}')
    need, caps = training.capability_of(method), capabilities(model_name)
    if need and need not in caps:
        raise ValueError(f'--method {method} needs a model with {CAPABILITIES[need]} ({", ".join(models_with(need))}); '
                         f'{model_name!r} is {backbones.model_family(model_name)!r}')
    if need is None and 'private_bn' in caps:
        raise ValueError(f'{model_name!r} has one private BN per resolution: train it with --method '
                         f'{" or ".join(training.methods_needing("private_bn"))}')


def resize_to(x, resolution):
    """Bilinear (``align_corners=True``) resize of a ``[N,3,H,W]`` batch to ``resolution`` (MutualNet's
    ``InputList``, reference 3.2); identity when the size already matches or ``resolution`` is None."""
    if resolution is None or (x.shape[-2] == resolution and x.shape[-1] == resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode='bilinear', align_corners=True)


class TrainNet(nn.Module):
    """The trainable whole: backbone ``model`` plus the policy's loss parameters (RS-Net's MRED ``alpha``), with
    one ``forward`` so that DDP sees every call.

    ``forward(x, subnet=None, call='logits', target=None)``:
      * ``'logits'``: ``[N,3,H,W] -> [N,K]`` in ``subnet``'s configuration (the policy's context: width,
        private BN) or as built;
      * ``'combine'``: list of ``[N,3,s,s]`` (one per sub-network of the step, policy order) ->
        ``(losses, logits list)``: every sub-network then the policy's :meth:`combine` (RS-Net MRED).
    """

    def __init__(self, model, policy):
        super().__init__()
        self.model = model
        self.policy = policy
        self.criterion = getattr(policy, 'mred', None)  # registered: the optimiser and DDP see its alpha

    def forward(self, x, subnet=None, call='logits', target=None, subnets=None):
        if call == 'logits':
            if subnet is None:
                return self.model(x)
            with self.policy.context(self.model, subnet):
                return self.model(x)
        if call == 'combine':
            logits = []
            for sub, xi in zip(subnets, x):
                with self.policy.context(self.model, sub):
                    logits.append(self.model(xi))
            return self.policy.combine(logits, target), logits
        raise ValueError(f"call must be 'logits' or 'combine', got {call!r}")


class StepContext:
    """What a method's ``train_step`` needs from the engine.

    * ``pass_context(last)``: DDP ``no_sync`` for every forward/backward pass except the one that
      must all-reduce (the last pass of the last micro-batch of an optimizer step).
    * ``autocast()``: the AMP context.
    * ``backward(loss)``: ``scaler.scale(loss / micro_batches_in_step).backward()``.
    """

    def __init__(self, ddp, sync, autocast, backward, step_index):
        self._ddp, self._sync, self._autocast, self._backward = ddp, sync, autocast, backward
        self.step_index = step_index

    def pass_context(self, last_pass):
        if self._ddp is not None and not (self._sync and last_pass):
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def autocast(self):
        return self._autocast()

    def backward(self, loss):
        self._backward(loss)


def _correct(logits, target, k=1):
    """Images whose ``k`` highest logits include the label (multi-hot ``[N, C]`` targets: include a positive)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, 1).indices
    if target.dim() == 2:
        return target.gather(1, top).gt(0).any(1).sum().item()
    return (top == target.view(-1, 1)).any(1).sum().item()


class Method:
    """Base: builds the criterion, runs one training micro-batch, describes evaluation points."""

    name = 'standard'
    train_multires = False  # the training loader yields one tensor per resolution
    #: validation feeds each resolution its own resized image, whatever ``--val-resize-mode`` (private BN per
    #: resolution: every resolution is the input of its own network, RS-Nets Sec. 3.1)
    val_multires = False
    #: the final evaluation also prints the query table by MACs budget (MutualNet Sec. 4.1 reports its results so),
    #: without ``--macs-budgets``
    budget_table = False
    #: trains with ``--task multilabel`` (the Elastic paper fine-tunes Elastic and dense classifiers, one pass)
    multilabel = False
    #: trains sub-networks at random input sizes (``--input-sizes``, MutualNet); a width-only sandwich refuses them
    input_sizes = False

    def __init__(self, args, model):
        self.args = args
        self.model = model
        self.ce = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        if getattr(args, 'task', 'classification') == 'multilabel':  # BCE x classes (multilabel.multilabel_loss)
            from .multilabel import multilabel_loss
            self.ce = multilabel_loss
        self.policy = self.build_policy()

    # ------------------------------------------------------------------ setup
    def build_policy(self):
        """The training policy of the method (:mod:`backbones.training`)."""
        return training.StandardPolicy(seed=self.args.seed)

    def train_resolutions(self):
        """Resolutions the training loader must produce per image (None: one crop of train_crop_size)."""
        return None

    # ------------------------------------------------------------------ training
    def net_input(self, images, subnet):
        """The batch for ``subnet``: resized (bilinear, ``align_corners=True``) to its input size."""
        return resize_to(images, subnet.input_size)

    def train_step(self, net, images, target, ctx):
        """One micro-batch: the policy's sub-networks of this step, each a forward + backward on the same images
        (resized to the sub-network's input size), its losses from the policy (ground truth, inplace distillation,
        extra terms such as the ponder cost).

        Returns:
            dict: ``loss`` (float, summed over passes), ``correct`` (top-1 hits of the first sub-network), ``n``
            (images), plus per-pass floats (``loss_max``/``loss_min``, ``ponder_cost`` ...).
        """
        subnets = self.policy.subnets(ctx.step_index)
        teacher, total, out = None, 0.0, {'n': target.shape[0]}
        for k, sub in enumerate(subnets):
            with ctx.pass_context(k == len(subnets) - 1), ctx.autocast():
                logits = net(self.net_input(images, sub), subnet=sub)
                task = {'loss': self.ce(logits, target)} if sub.gt_weight else {}
                losses = self.policy.subnet_losses(sub, task, logits, teacher)
                losses.update(self.policy.extra_losses(self.model))
                loss = sum(v for key, v in losses.items() if key.startswith('loss'))
            ctx.backward(loss)
            total += loss.item()
            if k == 0:
                out['correct'] = _correct(logits, target)
            if sub.teacher:
                teacher = logits.detach()
            if len(subnets) > 1 and sub.tag in ('max', 'min'):
                out[f'loss_{sub.tag}'] = loss.item()
            for key, v in losses.items():
                if not key.startswith('loss') and torch.is_tensor(v) and v.numel() == 1:
                    out[key] = v.item()
        out['loss'] = total
        return out

    # ------------------------------------------------------------------ evaluation
    def val_resolutions(self):
        """Resolutions evaluated (None: the val crop only)."""
        return None

    def eval_points(self, final):
        """List of ``(width, resolution)``; ``final`` is the full grid, otherwise the cheap per-epoch points
        (the first point is the one ``best.pth`` is selected on)."""
        return [(None, None)]

    def logits_at(self, model, images, width, resolution):
        return model(self._pick(images, resolution))

    def _pick(self, images, resolution):
        """The input for ``resolution``: the matching element of a multi-resolution list, or the single
        crop resized on the device."""
        if isinstance(images, (list, tuple)):
            res = self.val_resolutions()
            return images[res.index(resolution)] if resolution in res else images[0]
        return resize_to(images, resolution)

    def point_context(self, model, width, resolution, calibrated=False):
        """Context selecting the configuration of one evaluation point (width, BN statistics)."""
        return contextlib.nullcontext()

    def macs(self, model, width, resolution):
        """MACs per image of one evaluation point (``backbones.complexity``)."""
        size = resolution or self.args.val_crop_size
        return complexity(model, input_size=size)['macs']


class StandardMethod(Method):
    """Cross-entropy (with optional label smoothing)."""

    multilabel = True


class SlimmableMethod(Method):
    """US-Nets (``usnet``) and MutualNet (``mutualnet``): :class:`backbones.training.SandwichPolicy` (sandwich rule,
    inplace distillation, random input sizes for MutualNet)."""

    name = 'usnet'

    def __init__(self, args, model):
        lo, hi = model.width_range
        if args.widths:
            lo, hi = args.widths
            mlo, mhi = model.width_range
            if not (mlo <= lo < hi <= mhi):
                raise ValueError(f'--widths {lo} {hi} must lie within the model width range {model.width_range} '
                                 f'with min < max')
        self.width_range = (float(lo), float(hi))
        # per-epoch validation evaluates the range ends with their training-time (width-only) statistics
        for w in self.width_range:
            model.add_bn_config(w)
        mutual = self.input_sizes and args.input_sizes
        self.resolutions = sorted(args.input_sizes, reverse=True) if mutual else None
        if self.input_sizes and not self.resolutions:
            raise ValueError(f'--method {self.name} needs --input-sizes (e.g. 224 192 160 128)')
        if not self.input_sizes and args.input_sizes:
            sizes = [m for m, cls in METHOD_CLASSES.items() if cls.input_sizes]
            raise ValueError(f'--method {self.name} trains at one input size; --input-sizes is for '
                             f'{"/".join(sizes)}')
        if self.resolutions and max(self.resolutions) != args.train_crop_size:
            raise ValueError(f'the largest --input-sizes ({max(self.resolutions)}) is the teacher\'s input and must '
                             f'equal --train-crop-size ({args.train_crop_size})')
        super().__init__(args, model)
        self.eval_points(final=True)  # a final-evaluation width outside the range fails now, not after training

    def build_policy(self):
        a = self.args
        return training.SandwichPolicy(self.width_range, num_subnets=a.num_subnets, input_sizes=self.resolutions,
                                       distill='inplace' if a.inplace_distill else None,
                                       student_gt_weight=0.0 if a.inplace_distill else 1.0, seed=a.seed)

    def val_resolutions(self):
        if self.args.eval_resolutions:
            return sorted(self.args.eval_resolutions, reverse=True)
        return self.resolutions or None

    def eval_widths(self):
        if self.args.eval_widths:
            ws = sorted(self.args.eval_widths, reverse=True)
        else:
            lo, hi = self.width_range
            ws = sorted({hi, lo, round(lo + (hi - lo) / 2, 4)}, reverse=True)
        return self._inside_width_range(ws, '--eval-widths')

    def _inside_width_range(self, ws, flag):
        """``ws`` unchanged; ValueError naming ``flag`` and the model's range for a width outside it."""
        lo, hi = self.model.width_range
        bad = [w for w in ws if not lo <= w <= hi]
        if bad:
            raise ValueError(f'{flag} widths {bad} lie outside the model width range {self.model.width_range}')
        return ws

    def eval_points(self, final):
        res = self.val_resolutions() or [None]
        if final and self.args.eval_points:
            self._inside_width_range([w for w, _ in self.args.eval_points], '--eval-points')
            return list(self.args.eval_points)
        if final:
            return [(w, r) for w in self.eval_widths() for r in res]
        lo, hi = self.width_range
        return [(hi, res[0]), (lo, res[0])]

    def point_context(self, model, width, resolution, calibrated=False):
        # calibrated: the statistics of the (width, resolution) pair calibrate_bn just computed; otherwise the
        # width-only statistics trained with the network (range ends)
        return model.width_context(width, resolution if calibrated else None)

    def logits_at(self, model, images, width, resolution):
        return model(self._pick(images, resolution))

    def macs(self, model, width, resolution):
        return complexity(model, input_size=resolution or self.args.val_crop_size, width=width)['macs']


class MutualNetMethod(SlimmableMethod):
    """MutualNet: the sandwich rule with each student at a random input size of ``--input-sizes``."""

    name = 'mutualnet'
    input_sizes = True
    budget_table = True


class RSNetMethod(Method):
    """Parallel multi-resolution training with private BNs and MRED (RS-Nets)."""

    name = 'rsnet'
    train_multires = True
    val_multires = True

    def __init__(self, args, model):
        self.resolutions = list(model.resolutions)
        want = sorted(args.bn_resolutions or [], reverse=True)
        if want and want != self.resolutions:
            raise ValueError(f'--bn-resolutions {args.bn_resolutions} differ from the model\'s {self.resolutions} '
                             f'(set by --model-kwargs); give the same list to both')
        super().__init__(args, model)

    def build_policy(self):
        kd = None if self.args.kd_type == 'none' else self.args.kd_type
        return training.ResolutionPolicy(self.resolutions, mred=kd, seed=self.args.seed,
                                         untrained_resolution=getattr(self.args, 'untrained_resolution', 'error'))

    def train_resolutions(self):
        return self.resolutions

    def train_step(self, net, images, target, ctx):
        """Every resolution's image (the loader's shared crop resized per resolution) through its private BN, one
        MRED loss over their logits (:meth:`backbones.training.ResolutionPolicy.combine`)."""
        subnets = self.policy.subnets(ctx.step_index)
        with ctx.pass_context(True), ctx.autocast():
            losses, logits = net(images, call='combine', target=target, subnets=subnets)
        self._trained = True  # alpha of this run (ensemble_weights)
        loss = losses['loss_mred']
        ctx.backward(loss)
        out = {'loss': loss.item(), 'correct': _correct(logits[0], target), 'n': target.shape[0]}
        # log the ensemble CE, the distillation sum and the learned ensemble weights softmax(alpha)_j
        for k, v in losses.items():
            k = k[len('mred_'):]
            if (k in ('ce_ens', 'kd') or k.startswith('w_')) and torch.is_tensor(v) and v.numel() == 1:
                out[k] = v.item()
        return out

    def val_resolutions(self):
        res = sorted(self.args.eval_resolutions or self.resolutions, reverse=True)
        bad = [r for r in res if r not in self.resolutions]
        if bad and self.policy.untrained_resolution == 'error':
            raise ValueError(f'--eval-resolutions {bad} have no private BN (trained resolutions: {self.resolutions}); '
                             f'evaluate trained ones, or pass --untrained-resolution nearest to use the nearest '
                             f"trained resolution's private BN")
        return res

    def eval_points(self, final):
        return [(None, r) for r in self.val_resolutions()]

    def ensemble_weights(self, model):
        """``softmax(alpha)`` over the trained resolutions (descending), the weights of the RS-Nets README's
        multi-resolution ensemble row: the MRED scores learned in this run, else those a converted release keeps in
        its metadata (``rsnet_alpha``); None without either, or when the evaluated resolutions are not exactly the
        trained ones (RS-Nets Sec. 3.2, reference 4.2).

        Returns:
            list[float] | None
        """
        if self.val_resolutions() != self.resolutions:
            return None
        mred = self.policy.mred if self.policy.mred_type is not False else None
        alpha = None
        if mred is not None and getattr(self, '_trained', False):
            alpha = mred.alpha.detach().float().cpu()
        elif (getattr(model, 'pretrained_meta', None) or {}).get('rsnet_alpha') is not None:
            alpha = torch.tensor(model.pretrained_meta['rsnet_alpha'], dtype=torch.float32)
        if alpha is None or alpha.numel() != len(self.resolutions):
            return None
        return torch.softmax(alpha, 0).tolist()

    def point_context(self, model, width, resolution, calibrated=False):
        return self.policy.eval_context(model, None, resolution)

    def macs(self, model, width, resolution):
        if resolution in self.resolutions:
            return complexity(model, resolution=resolution)['macs']
        return complexity(model, input_size=resolution)['macs']


class SACTMethod(Method):
    """Cross-entropy + tau * ponder cost (ACT/SACT)."""

    name = 'sact'

    def build_policy(self):
        a = self.args
        return training.PonderPolicy(a.tau if a.tau is not None else getattr(self.model, 'tau', 0.01), seed=a.seed)


class PolicyMethod(Method):
    """Any other method of the training core: its policy (:func:`backbones.training.policy_for`, options from
    ``--policy-options``) drives :meth:`Method.train_step`; evaluation at the model as built, in the policy's
    :meth:`~backbones.training.TrainingPolicy.eval_context`.

    Raises:
        ValueError: a policy that combines the sub-networks' logits (it needs a multi-resolution loader, which
            only ``--method rsnet`` sets up).
    """

    @property
    def name(self):
        return self.args.method

    def build_policy(self):
        a = self.args
        policy = training.policy_for(self.model, a.method, seed=a.seed, **dict(a.policy_options or {}))
        if policy.combines:
            raise ValueError(f'--method {a.method}: {policy!r} combines the logits of all sub-networks, which needs '
                             f'the multi-resolution loader of --method rsnet')
        return policy

    def point_context(self, model, width, resolution, calibrated=False):
        return self.policy.eval_context(model, width, resolution)


METHOD_CLASSES = {'standard': StandardMethod, 'usnet': SlimmableMethod, 'mutualnet': MutualNetMethod,
                  'rsnet': RSNetMethod, 'sact': SACTMethod}


def build_method(args, model):
    """The :class:`Method` for ``args.method`` (after :func:`check_method_model`): the protocol of the five papers'
    methods, :class:`PolicyMethod` for a method registered in the training core since."""
    check_method_model(args.method, args.model)
    return METHOD_CLASSES.get(args.method, PolicyMethod)(args, model)

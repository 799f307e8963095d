"""ImageNet recipes of the four papers as ``--recipe`` presets.

Each preset is a dict of ``tools/pretrain.py`` argument names (argparse ``dest``) to values.
Resolution order: built-in defaults < recipe < flags given on the command line (a user's explicit
``--lr 0.2`` always wins).  ``total_batch_size`` is the batch over all processes and accumulation
steps; the per-process batch is derived from it unless ``--batch-size`` is given.

Sources (``../shared/reference/official_implementations.md`` and the papers):

* Elastic (Wang et al., CVPR 2019, Sec. 4.1; reference 1.5): SGD m 0.9, lr 0.1, wd 1e-4 on all
  parameters, batch 256, 120 epochs, lr x0.1 at 30/60/90, plain CE, RandomResizedCrop(224) + flip,
  no colour/lighting augmentation.
* US-Nets (Yu & Huang, ICCV 2019; reference 2.3): 250 epochs, batch 1024, SGD nesterov m 0.9, lr 0.5
  with linear decay to 0 per iteration, wd 1e-4 only on non-depthwise conv and fc weights, crop scale
  (0.25, 1), colour jitter 0.4, PCA lighting 0.1, seed 1995, sandwich rule with 4 sub-networks and
  inplace distillation, 5 calibration batches.
* MutualNet (Yang et al., ECCV 2020, Sec. 4 and appendix; reference 3.2-3.4): as US-Nets with cosine
  decay per iteration, resolutions {224, 192, 160, 128}, width ranges [0.25,1] (MBv1), [0.7,1] (MBv2),
  [0.9,1] (ResNet-50: 120 epochs, batch 512, lr 0.2, crop scale 0.08), 9 calibration batches.
* RS-Nets (Wang et al., ECCV 2020; reference 4.2-4.3): resolutions {224,192,160,128,96}, MRED
  ``ens_topdown``, SGD m 0.9 (no nesterov), batch 256, cosine per iteration, wd on all parameters;
  ResNets 120 epochs lr 0.1 wd 1e-4; MobileNetV2 150 epochs lr 0.05 wd 4e-5; validation
  Resize(s/0.875) + CenterCrop(s) per resolution.
* SACT (Figurnov et al., CVPR 2017, supplementary Sec. 1; reference 5.6): SGD m 0.9, wd 1e-4 (TF-Slim
  L2 on conv weights), batch 32 per worker, lr 0.05 x0.1 every 30 epochs, 150-160 epochs, label
  smoothing 0.1, tau 0.005 (the released ImageNet model); the ImageNet models are fine-tuned from a
  pretrained ResNet (pass ``--init-checkpoint``).
"""

_ELASTIC = dict(method='standard', epochs=120, total_batch_size=256, lr=0.1, momentum=0.9, nesterov=False,
                weight_decay=1e-4, wd_policy='all', lr_schedule='step', lr_step_epochs=30, lr_gamma=0.1,
                warmup_epochs=0, label_smoothing=0.0, crop_scale_min=0.08, color_jitter=0.0, lighting=0.0,
                train_crop_size=224, val_resize_size=256, val_crop_size=224)

_US = dict(method='usnet', epochs=250, total_batch_size=1024, lr=0.5, momentum=0.9, nesterov=True,
           weight_decay=1e-4, wd_policy='conv-fc', lr_schedule='linear', warmup_epochs=0, label_smoothing=0.0,
           crop_scale_min=0.25, color_jitter=0.4, lighting=0.1, seed=1995, num_subnets=4, inplace_distill=True,
           calib_batches=5, train_crop_size=224, val_resize_size=256, val_crop_size=224)

_MUTUAL = dict(_US, method='mutualnet', lr_schedule='cosine', input_sizes=[224, 192, 160, 128], calib_batches=9,
               val_resize_mode='interpolate')

_RS = dict(method='rsnet', epochs=120, total_batch_size=256, lr=0.1, momentum=0.9, nesterov=False,
           weight_decay=1e-4, wd_policy='all', lr_schedule='cosine', warmup_epochs=0, label_smoothing=0.0,
           crop_scale_min=0.08, color_jitter=0.0, lighting=0.0, bn_resolutions=[224, 192, 160, 128, 96],
           kd_type='ens_topdown', val_resize_mode='crop', train_crop_size=224, val_resize_size=256,
           val_crop_size=224)

_SACT = dict(method='sact', epochs=160, batch_size=32, lr=0.05, momentum=0.9, nesterov=False, weight_decay=1e-4,
             wd_policy='conv-fc', lr_schedule='step', lr_step_epochs=30, lr_gamma=0.1, warmup_epochs=0,
             label_smoothing=0.1, tau=0.005, crop_scale_min=0.08, color_jitter=0.0, lighting=0.0,
             train_crop_size=224, val_resize_size=256, val_crop_size=224)

#: MS-COCO multi-label fine-tuning (Elastic paper Sec. 4.2; reference 1.6): from ImageNet weights (--pretrained, new
#: 80-way head), BCE x 80, SGD m 0.9, lr 0.001, wd 5e-4, batch 96, 36 epochs, lr x0.1 at epochs 24 and 30,
#: RandomResizedCrop 224 + flip; validation: Resize to 224x224, no crop; a class is predicted when its logit > 0
_COCO_MULTILABEL = dict(task='multilabel', method='standard', epochs=36, total_batch_size=96, lr=0.001, momentum=0.9,
                        nesterov=False, weight_decay=5e-4, wd_policy='all', lr_schedule='step', lr_milestones=[24, 30],
                        lr_gamma=0.1, warmup_epochs=0, label_smoothing=0.0, crop_scale_min=0.08, color_jitter=0.0,
                        lighting=0.0, train_crop_size=224, val_crop_size=224, stress_sizes=[224, 288, 352, 448])

RECIPES = {
    # MS-COCO multi-label (Elastic paper Sec. 4.2), Elastic and its dense twins
    'coco-multilabel-elastic-resnext50': dict(_COCO_MULTILABEL, model='resnext50_elastic'),
    'coco-multilabel-resnext50': dict(_COCO_MULTILABEL, model='resnext50_32x4d'),
    'coco-multilabel-elastic-dla60x': dict(_COCO_MULTILABEL, model='dla60x_elastic'),
    'coco-multilabel-dla60x': dict(_COCO_MULTILABEL, model='dla60x'),
    # Elastic and its plain baselines (same recipe in the paper)
    'elastic-resnext50': dict(_ELASTIC, model='resnext50_elastic'),
    'elastic-resnext101': dict(_ELASTIC, model='resnext101_elastic'),
    'elastic-se-resnext50': dict(_ELASTIC, model='se_resnext50_elastic'),
    'selastic-resnext50': dict(_ELASTIC, model='selastic_resnext50'),
    'resnext50': dict(_ELASTIC, model='resnext50_32x4d'),
    'resnext101': dict(_ELASTIC, model='resnext101_32x4d'),
    'se-resnext50': dict(_ELASTIC, model='se_resnext50'),
    # US-Nets
    'usnet-mobilenetv1': dict(_US, model='us_mobilenet_v1', widths=[0.25, 1.0],
                              eval_widths=[1.0, 0.75, 0.5, 0.25]),
    'usnet-mobilenetv2': dict(_US, model='us_mobilenet_v2', widths=[0.35, 1.0],
                              eval_widths=[1.0, 0.75, 0.5, 0.35]),
    # MutualNet
    'mutualnet-mobilenetv1': dict(_MUTUAL, model='us_mobilenet_v1', widths=[0.25, 1.0],
                                  eval_widths=[1.0, 0.75, 0.5, 0.25]),
    'mutualnet-mobilenetv2': dict(_MUTUAL, model='us_mobilenet_v2', widths=[0.7, 1.0],
                                  eval_widths=[1.0, 0.9, 0.8, 0.7]),
    'mutualnet-resnet50': dict(_MUTUAL, model='us_resnet50', widths=[0.9, 1.0], epochs=120,
                               total_batch_size=512, lr=0.2, crop_scale_min=0.08, eval_widths=[1.0, 0.95, 0.9]),
    # RS-Nets
    'rsnet-resnet18': dict(_RS, model='rs_resnet18'),
    'rsnet-resnet50': dict(_RS, model='rs_resnet50'),
    'rsnet-resnet101': dict(_RS, model='rs_resnet101'),
    'rsnet-mobilenetv2': dict(_RS, model='rs_mobilenet_v2', epochs=150, lr=0.05, weight_decay=4e-5),
    # SACT / ACT
    'sact-resnet101': dict(_SACT, model='sact_resnet101'),
    'sact-resnet50': dict(_SACT, model='sact_resnet50'),
    'act-resnet101': dict(_SACT, model='act_resnet101'),
    'act-resnet50': dict(_SACT, model='act_resnet50'),
    'preact-resnet101': dict(_SACT, model='preact_resnet101', method='standard', tau=None),
}


def get_recipe(name):
    """The preset dict for ``name`` (a copy).

    Raises:
        ValueError: unknown name; the message lists every recipe.
    """
    if name not in RECIPES:
        raise ValueError(f'unknown recipe {name!r}; choose one of: {", ".join(sorted(RECIPES))}')
    return {k: (list(v) if isinstance(v, list) else v) for k, v in RECIPES[name].items() if v is not None}


def describe(name):
    """One line per setting of recipe ``name`` (for ``--list-recipes``)."""
    r = get_recipe(name)
    return f'{name}: ' + ', '.join(f'{k}={v}' for k, v in sorted(r.items()))

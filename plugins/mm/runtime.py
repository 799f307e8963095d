"""What the MMSeg / MMDet frontends read from MMEngine's runtime: the training iteration that indexes the training
policy's step (:mod:`backbones.training`), and the model inside a DDP wrapper."""
from mmengine.logging import MessageHub
from mmengine.model import is_model_wrapper

__all__ = ['current_step', 'unwrap_model']


def current_step(module):
    """Index of the training iteration: MMEngine's ``iter`` (``RuntimeInfoHook``) when a runner drives training,
    else a counter kept on ``module`` (advanced by each call).  The first call also checks that every DDP rank
    draws the same sub-networks from ``module.policy``.

    Raises:
        RuntimeError: the ranks' policies disagree (:meth:`backbones.training.TrainingPolicy.check_agreement`).
    """
    policy = getattr(module, 'policy', None)
    if policy is not None and not getattr(module, '_dynscale_agreement', False):
        policy.check_agreement()
        module._dynscale_agreement = True
    hub = MessageHub.get_current_instance()
    it = hub.get_info('iter') if hub is not None else None
    if it is not None:
        return int(it)
    module._dynscale_step = getattr(module, '_dynscale_step', -1) + 1
    return module._dynscale_step


def unwrap_model(model):
    """The model inside an MMEngine model wrapper (``MMDistributedDataParallel`` ...), or ``model``."""
    return model.module if is_model_wrapper(model) else model

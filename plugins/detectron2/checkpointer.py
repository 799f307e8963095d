"""``DetectionCheckpointer`` for dynamic-scale backbones: loud backbone-key reports, checkpoints written atomically
with digests, refused when they belong to another model."""
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer

from .backbone import _unwrap, find_dynscale_backbone

logger = logging.getLogger(__name__)


class DynscaleCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reports unmatched *backbone* keys loudly.

    FPN and heads are expected to be missing from an ImageNet backbone checkpoint; backbone keys are not.
    Missing or shape-mismatched keys of the dynscale backbone (and of the C4 res5 head) raise
    ValueError when ``strict`` (``MODEL.DYNSCALE.STRICT_BACKBONE_LOAD``), else are logged as errors.

    Evaluating or resuming needs the *whole* detector: with ``whole_model`` (``--eval-only``) or
    ``resume_whole_model`` (a resume from the output folder's last checkpoint; ``MODEL.DYNSCALE.NON_STRICT`` turns
    both off) any missing, unexpected or
    shape-mismatched key of any module raises :class:`backbones.checkpoint.CheckpointMismatchError`, listing the
    keys in the detector's and the backbone's naming.
    """

    def __init__(self, model, save_dir='', *, strict=True, whole_model=False, resume_whole_model=False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.whole_model = whole_model
        self.resume_whole_model = resume_whole_model

    def save(self, name, **kwargs):
        """detectron2's ``save`` (model, checkpointables, ``kwargs`` into ``save_dir/name.pth``, then tagged as the
        last checkpoint), written atomically with per-tensor digests of the model
        (:func:`backbones.checkpoint.atomic_save`, :mod:`backbones.integrity`).

        Raises:
            backbones.checkpoint.CheckpointWriteError: no space left: the path and the space needed are named, no
                partial file is left and ``last_checkpoint`` still names the previous checkpoint.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        from backbones.checkpoint import atomic_save
        data = {'model': self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f'{name}.pth'
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f'Saving checkpoint to {path}')
        atomic_save(data, path)
        self.tag_last_checkpoint(basename)

    def _load_file(self, filename):
        """detectron2's reader (``.pkl`` model-zoo files, torch files, URLs); a local file it cannot read is
        described by :func:`backbones.pretrained.files.load_file` (what it is, and the fix) instead of a bare
        unpickling or zip error.

        Raises:
            backbones.pretrained.files.CheckpointFileError: an unreadable local file.
        """
        try:
            return super()._load_file(filename)
        except Exception:
            local = self.path_manager.get_local_path(filename) if '://' in filename else filename
            if not os.path.isfile(local):
                raise
            from backbones.pretrained.files import load_file
            load_file(local, remedy='resume from an earlier model_*.pth of OUTPUT_DIR (edit '
                                    'OUTPUT_DIR/last_checkpoint) or set MODEL.WEIGHTS to another file')
            raise

    def load(self, path, *args, **kwargs):
        """detectron2's ``load`` (``path`` is named in mismatch errors)."""
        self._loading = path
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        """detectron2's ``resume_or_load``; with ``resume_whole_model`` a resume (the output folder has a checkpoint)
        checks the whole model (``whole_model`` stays as set for other loads)."""
        saved = self.whole_model
        if resume and self.resume_whole_model and self.has_checkpoint():
            self.whole_model = True
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self.whole_model = saved

    def _backbone_prefixes(self):
        model = _unwrap(self.model)
        try:
            bb = find_dynscale_backbone(model)
        except ValueError:
            return ()
        names = [n for n, m in model.named_modules() if m is bb]
        pre = [names[0] + '.net.'] if names else []
        if any(n == 'roi_heads.res5' for n, _ in model.named_modules()):
            pre.append('roi_heads.res5.')
        return tuple(pre)

    def _load_model(self, checkpoint):
        from backbones.integrity import DIGEST_KEY, verify_digests

        from .checkpoint import sync_slimmable_configs
        digests = checkpoint.get(DIGEST_KEY) or (checkpoint.get('dynscale_meta') or {}).get(DIGEST_KEY)
        verify_digests(checkpoint.get('model', {}), digests, getattr(self, '_loading', 'checkpoint'))
        if self.whole_model:
            from backbones.checkpoint import check_state_fits
            check_state_fits(_unwrap(self.model), checkpoint.get('model', {}), getattr(self, '_loading', 'checkpoint'),
                             fix='MODEL.DYNSCALE.NON_STRICT True')
        removed = sync_slimmable_configs(_unwrap(self.model), checkpoint.get('model', {}))
        if removed:
            logging.getLogger(__name__).info(f'slimmable BN configs without statistics in the checkpoint '
                                             f'(uncalibrated, calibrated before evaluation): {removed}')
        incompatible = super()._load_model(checkpoint)
        prefixes = self._backbone_prefixes()
        if incompatible is None or not prefixes:
            return incompatible
        missing = [k for k in incompatible.missing_keys if k.startswith(prefixes)]
        mismatch = [k for k, *_ in incompatible.incorrect_shapes if k.startswith(prefixes)]
        if missing or mismatch:
            msg = (
                f'backbone weights do not match the model: {len(missing)} missing {missing[:10]}, '
                f'{len(mismatch)} shape-mismatched {mismatch[:10]}. Convert dynscale backbone checkpoints '
                'with '
                f'`python tools/convert_weights.py <weights> <out.pkl> --to detectron2 --config-file <this config>` '
                f'and '
                f'check that MODEL.DYNSCALE.NAME / WIDTH_RANGE / RESOLUTIONS match the checkpoint.'
            )
            if self.strict:
                raise ValueError(msg)
            logging.getLogger(__name__).error(msg)
        return incompatible

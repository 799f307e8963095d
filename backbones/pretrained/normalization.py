"""Input normalisation that travels with a set of weights.

A network computes what its authors measured only on inputs prepared the way they were during training.
The four origins differ: allenai/elastic, slimmable_networks, MutualNet, torchvision and timm feed RGB
images scaled to [0, 1] and normalised with the ImageNet mean/std; yikaiw/RS-Nets feeds **unnormalised**
RGB in [0, 1] (``../shared/reference/official_checkpoints/README.md``, RS-Nets section).  dynscale writes
the normalisation into every checkpoint's metadata on the 0-255 scale the frameworks use
(``pixel_mean``/``pixel_std`` as Detectron2's ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` and MMEngine's
``data_preprocessor`` ``mean``/``std``), so that "[0, 1], no normalisation" is ``mean 0, std 255``.
"""
from dataclasses import dataclass

__all__ = ['InputNormalization', 'IMAGENET', 'UNIT_RANGE', 'INCEPTION']


@dataclass(frozen=True)
class InputNormalization:
    """Per-channel ``(x - mean) / std`` on 0-255 pixel values in ``channel_order``.

    Attributes:
        mean (tuple[float]): 3 values on the 0-255 scale.
        std (tuple[float]): 3 values on the 0-255 scale.
        channel_order (str): ``'RGB'`` or ``'BGR'`` (Detectron2's ``INPUT.FORMAT``).
        description (str): how the origin prepares inputs, for messages.
    """

    mean: tuple
    std: tuple
    channel_order: str = 'RGB'
    description: str = ''

    def __post_init__(self):
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f'InputNormalization needs 3 means and 3 positive stds, got {self.mean}, {self.std}')
        if self.channel_order not in ('RGB', 'BGR'):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    # -------------------------------------------------------------------------------- conversions
    @classmethod
    def from_meta(cls, meta, default=None):
        """From checkpoint metadata (``pixel_mean``, ``pixel_std`` on 0-255, ``input_format``).

        Returns:
            InputNormalization | None: ``default`` when the metadata has no ``pixel_mean``.
        """
        if not meta or meta.get('pixel_mean') is None or meta.get('pixel_std') is None:
            return default
        return cls(tuple(float(v) for v in meta['pixel_mean']), tuple(float(v) for v in meta['pixel_std']),
                   meta.get('input_format', 'RGB'), meta.get('input_description', ''))

    def to_meta(self):
        """Metadata entries: ``pixel_mean``, ``pixel_std`` (0-255), ``input_format``, ``input_description``."""
        return {'pixel_mean': [round(v, 4) for v in self.mean], 'pixel_std': [round(v, 4) for v in self.std],
                'input_format': self.channel_order, 'input_description': self.description}

    @classmethod
    def of_model(cls, model):
        """The normalisation a dynscale backbone expects (its ``pixel_mean``/``pixel_std`` on [0, 1])."""
        return cls(tuple(255.0 * v for v in model.pixel_mean), tuple(255.0 * v for v in model.pixel_std),
                   getattr(model, 'input_format', 'RGB'), getattr(model, 'input_description', ''))

    def apply_to(self, model):
        """Set ``model.pixel_mean``/``pixel_std`` (on [0, 1]) and ``input_format`` from this normalisation."""
        model.pixel_mean = tuple(v / 255.0 for v in self.mean)
        model.pixel_std = tuple(v / 255.0 for v in self.std)
        model.input_format = self.channel_order
        model.input_description = self.description
        return model

    def matches(self, mean, std, channel_order='RGB', tol=1e-2):
        """Whether a framework's ``mean``/``std`` (0-255) and channel order give the same inputs."""
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if channel_order != self.channel_order:
            mean, std = mean[::-1], std[::-1]
        return (len(mean) == 3 and len(std) == 3
                and all(abs(a - b) <= tol for a, b in zip(mean, self.mean))
                and all(abs(a - b) <= tol for a, b in zip(std, self.std)))

    def __str__(self):
        m = ', '.join(f'{v:g}' for v in self.mean)
        s = ', '.join(f'{v:g}' for v in self.std)
        return f'{self.channel_order} mean [{m}] std [{s}] (0-255 scale)' + \
            (f': {self.description}' if self.description else '')


#: ToTensor then Normalize(ImageNet mean/std): allenai/elastic, US-Nets, MutualNet, torchvision, most timm weights
IMAGENET = InputNormalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 'RGB',
                              'RGB in [0, 1] normalised with the ImageNet mean/std')
#: ToTensor only: yikaiw/RS-Nets' PyTorch pipeline
UNIT_RANGE = InputNormalization((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), 'RGB',
                                'unnormalised RGB in [0, 1] (RS-Nets: ToTensor without Normalize)')
#: ToTensor then Normalize(0.5, 0.5): timm's IMAGENET_INCEPTION_MEAN/STD, the ``pretrained_cfg`` of
#: ``resnetv2_50.a1h_in1k`` / ``resnetv2_101.a1h_in1k`` (timm 1.0)
INCEPTION = InputNormalization((127.5, 127.5, 127.5), (127.5, 127.5, 127.5), 'RGB',
                               'RGB in [0, 1] normalised with mean = std = 0.5 (timm IMAGENET_INCEPTION_MEAN/STD)')

"""ImageFolder pipelines for pretraining.

* Train: ``RandomResizedCrop`` + horizontal flip (+ optional colour jitter and PCA lighting), ImageNet
  mean/std (the backbone's ``pixel_mean``/``pixel_std``).  Multi-resolution methods get ONE random crop
  per image, resized to every resolution (RS-Nets, Wang et al. 2020, Sec. 3.1; MutualNet resizes on
  the device instead, see :mod:`.methods`).
* Val: ``Resize`` (shorter side) + ``CenterCrop``; per resolution for RS-Net (``Resize(int(s / crop_pct))``
  + ``CenterCrop(s)``, reference 4.3).
* Unreadable or corrupted files are reported with their path on stderr and then skipped
  (``bad_images='skip'``: the sample is dropped from its batch) or raise a RuntimeError naming the
  file and the flag (``'fail'``).
* :class:`ResumableSampler` shards like ``DistributedSampler`` (same permutation for a given seed and
  epoch) and can start mid-epoch; it yields ``(index, epoch)`` keys so that each sample's augmentation
  is drawn from its own generator seeded by (seed, epoch, index): a resumed run sees exactly the crops
  an uninterrupted run would have seen, whatever the number of workers.
"""
import math
import sys

import torch
from torch.utils.data import Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from backbones import training

BAD_IMAGE_POLICIES = ('skip', 'fail')

# PCA of ImageNet RGB pixels (Krizhevsky et al. 2012, Sec. 4.1), the constants every "lighting"
# augmentation uses (pixels in [0, 1]).
_IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
_IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                    (-0.5808, -0.0045, -0.8140),
                    (-0.5836, -0.6948, 0.4203))


class Lighting(torch.nn.Module):
    """AlexNet-style PCA lighting noise on a ``[3, H, W]`` tensor in [0, 1] (before normalisation).

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)`` per image
    (Krizhevsky et al. 2012, Sec. 4.1; the ``lighting 0.1`` of the US-Nets/MutualNet recipes).
    """

    def __init__(self, alphastd):
        super().__init__()
        self.alphastd = float(alphastd)
        self.register_buffer('eigval', torch.tensor(_IMAGENET_EIGVAL))
        self.register_buffer('eigvec', torch.tensor(_IMAGENET_EIGVEC))

    def forward(self, img):
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.eigvec * alpha.view(1, 3) * self.eigval.view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)


def _interp(name):
    try:
        return InterpolationMode(name)
    except ValueError:
        raise ValueError(f'interpolation must be one of {[m.value for m in InterpolationMode]}, got {name!r}') from None


class MultiResolutionTrain:
    """One ``RandomResizedCrop`` per image, resized to every resolution (list of ``[3, s, s]`` tensors).

    Args:
        resolutions (list[int]): output sizes, e.g. ``[224, 192, 160, 128, 96]``; the crop is taken at
            the largest.
        independent_flip (bool): flip each resolution independently (RS-Nets' PyTorch pipeline,
            reference 4.3) instead of once before resizing.
    """

    def __init__(self, resolutions, scale, interpolation, mean, std, hflip=0.5, independent_flip=True,
                 color_jitter=0.0, lighting=0.0):
        self.resolutions = [int(r) for r in resolutions]
        interp = _interp(interpolation)
        self.crop = transforms.RandomResizedCrop(max(self.resolutions), scale=scale, interpolation=interp)
        self.flip = transforms.RandomHorizontalFlip(hflip) if hflip > 0 else None
        self.independent_flip = independent_flip
        self.resize = {r: transforms.Resize((r, r), interpolation=interp, antialias=True) for r in self.resolutions}
        post = []
        if color_jitter:
            post.append(transforms.ColorJitter(color_jitter, color_jitter, color_jitter))
        post.append(transforms.ToTensor())
        if lighting:
            post.append(Lighting(lighting))
        post.append(transforms.Normalize(mean, std))
        self.post = transforms.Compose(post)

    def __call__(self, img):
        img = self.crop(img)
        if self.flip is not None and not self.independent_flip:
            img = self.flip(img)
        out = []
        for r in self.resolutions:
            im = self.resize[r](img) if img.size != (r, r) else img
            if self.flip is not None and self.independent_flip:
                im = self.flip(im)
            out.append(self.post(im))
        return out


class MultiResolutionVal:
    """``Resize(int(s / crop_pct))`` + ``CenterCrop(s)`` for every resolution s (list of tensors): the side is
    truncated as in the RS-Nets authors' evaluation (``int(s / 0.875)``: 182 at s = 160, 109 at s = 96; reference
    4.3), not rounded."""

    def __init__(self, resolutions, crop_pct, interpolation, mean, std):
        interp = _interp(interpolation)
        self.tfs = [transforms.Compose([
            transforms.Resize(int(r / crop_pct), interpolation=interp, antialias=True),
            transforms.CenterCrop(r), transforms.ToTensor(), transforms.Normalize(mean, std)]) for r in resolutions]

    def __call__(self, img):
        return [t(img) for t in self.tfs]


def build_train_transform(args, mean, std, resolutions=None):
    """Training transform from the parsed arguments.

    Args:
        resolutions (list[int] | None): when given (RS-Net), returns a :class:`MultiResolutionTrain`
            producing one tensor per resolution from a shared crop.
    """
    scale = (args.crop_scale_min, 1.0)
    if resolutions:
        return MultiResolutionTrain(resolutions, scale, args.interpolation, mean, std, hflip=args.hflip,
                                    independent_flip=True, color_jitter=args.color_jitter, lighting=args.lighting)
    tf = [transforms.RandomResizedCrop(args.train_crop_size, scale=scale, interpolation=_interp(args.interpolation))]
    if args.hflip > 0:
        tf.append(transforms.RandomHorizontalFlip(args.hflip))
    if args.color_jitter:
        tf.append(transforms.ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter))
    tf.append(transforms.ToTensor())
    if args.lighting:
        tf.append(Lighting(args.lighting))
    tf.append(transforms.Normalize(mean, std))
    return transforms.Compose(tf)


def build_val_transform(args, mean, std, resolutions=None):
    """Validation transform: ``Resize(val_resize_size)`` + ``CenterCrop(val_crop_size)`` (or one per
    resolution with the same crop ratio when ``resolutions`` is given)."""
    if resolutions:
        return MultiResolutionVal(resolutions, args.val_crop_size / args.val_resize_size, args.interpolation, mean, std)
    return transforms.Compose([
        transforms.Resize(args.val_resize_size, interpolation=_interp(args.interpolation), antialias=True),
        transforms.CenterCrop(args.val_crop_size), transforms.ToTensor(), transforms.Normalize(mean, std)])


def sample_seed(seed, epoch, index):
    """Seed of one sample's augmentation: a fixed function of (run seed, epoch, dataset index)."""
    return (((int(seed) * 1_000_003) ^ (int(epoch) * 10_000_019)) * 31 + int(index)) % (2 ** 63 - 1)


class UnreadableImageError(RuntimeError):
    """An image file could not be decoded (``--bad-images fail``); the message names the path."""


class RobustImageFolder(Dataset):
    """``torchvision.datasets.ImageFolder`` scan with an explicit unreadable-file policy.

    ``__getitem__`` accepts an int (no seeding: validation) or an ``(index, epoch)`` key from
    :class:`ResumableSampler` (augmentation drawn from a generator seeded by
    :func:`sample_seed`, CPU RNG of the caller untouched).  Returns ``(image, target)`` where image is
    a tensor or a list of tensors (multi-resolution), or ``None`` for a skipped unreadable file.

    Args:
        root (str): folder with one sub-folder per class.
        indices (list[int] | None): restrict to these sample indices (a deterministic slice).
        bad_images (str): ``'skip'`` or ``'fail'``.

    Raises:
        ValueError: unknown ``bad_images``; FileNotFoundError: root missing or without class folders.
        UnreadableImageError: (``'fail'``) an unreadable image, naming its path.
    """

    def __init__(self, root, transform, bad_images='skip', seed=0, indices=None):
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f'bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}')
        try:
            folder = datasets.ImageFolder(root)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'{e}. Expected an ImageFolder root: {root}/<class>/<image> '
                                    f'(ImageNet: run valprep.sh on the val set first)') from None
        self.root = root
        self.classes = folder.classes
        self.class_to_idx = folder.class_to_idx
        samples = folder.samples
        if indices is not None:
            samples = [samples[i] for i in indices]
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.bad_images = bad_images
        self.seed = seed

    def __len__(self):
        return len(self.samples)

    def remap_targets(self, index_map):
        """Replace every target ``t`` by ``index_map[t]`` (e.g. Imagenette folder order -> ImageNet-1k indices);
        returns self."""
        self.samples = [(p, index_map[t]) for p, t in self.samples]
        self.targets = [t for _, t in self.samples]
        return self

    def select(self, indices):
        """Keep only the samples at ``indices`` (None keeps all); returns self."""
        if indices is not None:
            self.samples = [self.samples[i] for i in indices]
            self.targets = [t for _, t in self.samples]
        return self

    def load(self, path):
        """Open ``path`` as an RGB PIL image; applies the unreadable-file policy."""
        from PIL import Image
        try:
            with open(path, 'rb') as f:
                img = Image.open(f)
                return img.convert('RGB')
        except Exception as e:  # PIL raises OSError/UnidentifiedImageError/SyntaxError/ValueError variously
            msg = f'unreadable image {path}: {type(e).__name__}: {e}'
            if self.bad_images == 'fail':
                raise UnreadableImageError(f'{msg}. Remove or replace the file, or pass --bad-images skip to skip '
                                           f'unreadable images.') from e
            print(f'[pretrain] WARNING: {msg} -- skipped (--bad-images skip)', file=sys.stderr, flush=True)
            return None

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, epoch = key
        else:
            index, epoch = key, None
        path, target = self.samples[index]
        img = self.load(path)
        if img is None:
            return None
        if self.transform is not None:
            if epoch is None:
                img = self.transform(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(self.seed, epoch, index))
                    img = self.transform(img)
        return img, target


def collate_skip_none(batch):
    """``default_collate`` after dropping skipped (``None``) samples; ``None`` if all were skipped."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(index, epoch)`` keys and can start mid-epoch.

    Single-process runs use it with ``num_replicas=1, rank=0``; the permutation depends only on
    ``seed`` and the epoch (``set_epoch``), so a resumed run visits the remaining samples in the
    original order.  ``set_epoch(epoch, start=k)`` skips the first ``k`` samples of this rank.
    """

    def __init__(self, dataset, num_replicas=1, rank=0, shuffle=True, seed=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch, start=0):
        """Select the epoch's permutation and the number of this rank's samples already consumed."""
        super().set_epoch(epoch)
        if not 0 <= start <= self.num_samples:
            raise ValueError(f'start must be within 0..{self.num_samples}, got {start}')
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(i, self.epoch) for i in indices])

    def __len__(self):
        return self.num_samples - self.start


class ShardSampler(torch.utils.data.Sampler):
    """Deterministic, non-padded shard ``range(rank, N, world)`` for evaluation (every image counted once)."""

    def __init__(self, n, num_replicas=1, rank=0):
        self.idx = list(range(rank, n, num_replicas))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


class CalibrationSampler(training.CalibrationSampler):
    """:class:`backbones.training.CalibrationSampler` keyed ``(index, 0)`` for :class:`ImageFolderDataset`, so that
    the augmentation of an image is the same wherever it is read (post-statistics BN, US-Nets Sec. 3.3).  With the
    statistics averaged over the processes weighted by their batch counts
    (:func:`backbones.training.average_bn_statistics`), one process and several estimate the same statistics.

    Args: as :class:`backbones.training.CalibrationSampler`.
    """

    def __iter__(self):
        return iter([(i, 0) for i in self.indices])


def subset_indices(n, max_samples, seed):
    """A fixed random subset of ``range(n)`` (sorted) of size ``max_samples`` (all when None/larger)."""
    if not max_samples or max_samples >= n:
        return None
    g = torch.Generator().manual_seed(int(seed) + 12345)
    return sorted(torch.randperm(n, generator=g)[:max_samples].tolist())


def steps_in_epoch(num_samples_per_rank, batch_size, accum_steps):
    """(micro-batches, optimizer steps) of one epoch with ``drop_last`` batching."""
    micro = num_samples_per_rank // batch_size
    if micro == 0:
        raise ValueError(f'the training set has {num_samples_per_rank} images per process, fewer than one batch '
                         f'of {batch_size}: lower --batch-size')
    return micro, math.ceil(micro / accum_steps)

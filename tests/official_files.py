"""Synthetic files in the official containers, built from the manifests in
``../shared/reference/official_checkpoints/<name>.json`` (exact keys, shapes, dtypes and top-level layout).

Every float tensor gets its own random values (seeded per key), so a test can tell where each source
tensor landed; running variances are positive, ``num_batches_tracked`` holds the row index.
"""
import json
import os
import zipfile
import zlib
from collections import OrderedDict

import torch
from conftest import SHARED

MANIFEST_DIR = os.path.join(SHARED, 'reference', 'official_checkpoints')


def manifest_names():
    """Names of every manifest (``<name>.json``), sorted; empty when ../shared is absent."""
    if not os.path.isdir(MANIFEST_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(MANIFEST_DIR) if f.endswith('.json'))


def manifest(name):
    """The parsed manifest of ``name``."""
    with open(os.path.join(MANIFEST_DIR, name + '.json')) as f:
        return json.load(f)


def state_dict_of(name, dtype=None):
    """OrderedDict with the manifest's exact keys/shapes/dtypes and per-key random values."""
    sd = OrderedDict()
    for i, row in enumerate(manifest(name)['state_dict']):
        key, shape, dt, role = row[:4]
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if dt == 'int64':
            sd[key] = torch.tensor(i, dtype=torch.int64)
        elif role == 'running_var':
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif role == 'running_mean':
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif key.endswith('.weight') and len(shape) == 1:  # BN scale
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else 1
            sd[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5 * (0.5 if len(shape) > 1 else 0.05)
        if dtype is not None and sd[key].is_floating_point() and len(shape) > 1:
            sd[key] = sd[key].to(dtype)
    return sd


def container_of(name, sd=None):
    """The official top-level container of ``name`` holding ``sd`` (optimizer state left empty)."""
    m = manifest(name)
    sd = state_dict_of(name) if sd is None else sd
    keys = m['container'].get('top_level_keys_in_order') or list(m['container']['top_level_keys'])
    fill = {'epoch': 120, 'arch': m['name'], 'best_err1': 21.5, 'best_acc0': 79.0, 'best_acc': 79.0,
            'last_epoch': 249, 'optimizer': {'state': {}, 'param_groups': []}}
    out = OrderedDict()
    for k in keys:
        out[k] = sd if k in ('state_dict', 'model') else fill.get(k, 0)
    return out


def write_official(name, path, zip_wrap=None, legacy=False, dtype=None):
    """Write a synthetic official file of ``name`` at ``path``; returns ``(path, state_dict)``.

    Args:
        zip_wrap (str | None): member name: write a zip archive wrapping the checkpoint (GitHub ``*.pt.zip``).
        legacy (bool): torch's legacy (non-zip) serialisation, as torch 0.4/1.0 wrote.
        dtype (torch.dtype | None): cast conv / fc weights (e.g. float16, allenai/elastic ``--fp16``).
    """
    sd = state_dict_of(name, dtype)
    obj = container_of(name, sd)
    if zip_wrap:
        inner = path + '.inner'
        torch.save(obj, inner, _use_new_zipfile_serialization=not legacy)
        with zipfile.ZipFile(path, 'w') as zf:
            zf.write(inner, zip_wrap)
        os.unlink(inner)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path, sd


#: MutualNet zoo rows -> manifest
_MUTUALNET = {'us_mobilenet_v1': 'mutualnet_mobilenet_v1', 'us_mobilenet_v2': 'mutualnet_mobilenet_v2',
              'us_resnet50': 'mutualnet_resnet50'}


def write_zoo_source(entry, folder):
    """Write a synthetic file of ``entry``'s origin named ``entry.download_name`` into ``folder``; returns the path.

    Official origins: the manifest's container (US-Nets zip-wrapped, as downloaded); torchvision: the architecture's
    ``state_dict()`` (random init); timm: a ``.safetensors`` state dict of ``timm.create_model`` (random init).
    """
    path = os.path.join(folder, entry.download_name)
    if entry.origin == 'allenai/elastic' or entry.origin == 'yikaiw/RS-Nets':
        write_official(entry.release, path)
    elif entry.origin == 'JiahuiYu/slimmable_networks':
        write_official(entry.model, path, zip_wrap=entry.release + '.pt', legacy=True)
    elif entry.origin == 'taoyang1122/MutualNet':
        write_official(_MUTUALNET[entry.model], path)
    elif entry.origin == 'torchvision':
        import torchvision
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, entry.release.split()[0])(weights=None).state_dict(), path)
    elif entry.origin == 'timm':
        import timm
        from safetensors.torch import save_file
        torch.manual_seed(0)
        sd = timm.create_model(entry.release.split('.')[0], pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        raise ValueError(f'no synthetic source for origin {entry.origin}')
    return path

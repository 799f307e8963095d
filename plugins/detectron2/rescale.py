"""Resizing a Detectron2 batch (images, boxes, masks, keypoints) to another shorter side: the input size of a
sub-network (sandwich rule, RS-Net scale buckets)."""
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks


def _resize_instances(inst, new_hw, sx, sy):
    out = Instances(new_hw)
    for name, val in inst.get_fields().items():
        if isinstance(val, Boxes):
            b = Boxes(val.tensor.clone())
            b.scale(sx, sy)
            b.clip(new_hw)
            val = b
        elif isinstance(val, PolygonMasks):
            val = PolygonMasks(
                [[p * np.array([sx, sy] * (len(p) // 2), dtype=p.dtype) for p in obj] for obj in val.polygons]
            )
        elif isinstance(val, BitMasks):
            t = val.tensor
            t = (
                F.interpolate(t[:, None].float(), size=new_hw, mode='nearest')[:, 0]
                if len(t)
                else t.new_zeros((0,) + tuple(new_hw))
            )
            val = BitMasks(t > 0.5)
        elif isinstance(val, Keypoints):
            k = val.tensor.clone()
            k[..., 0] *= sx
            k[..., 1] *= sy
            val = Keypoints(k)
        elif name not in ('gt_classes',) and torch.is_tensor(val) and val.dim() > 1:
            raise ValueError(
                f'cannot rescale instance field {name!r} ({type(val).__name__}); supported: '
                f'Boxes, PolygonMasks, BitMasks, Keypoints and per-instance scalars'
            )
        out.set(name, val)
    return out


def rescale_batch(batched_inputs, short, max_size):
    """Resize a detectron2 training batch so each image's shorter side is ``short`` (longer <= ``max_size``).

    Images are resized bilinearly (antialiased when shrinking), boxes / polygons / keypoints scaled by
    the same factors, bit masks resized nearest. Images already at the target size are returned as is.

    Args:
        batched_inputs (list[dict]): detectron2 dicts with ``image`` ``[3, H, W]`` (uint8 or float) and
            optionally ``instances``.
        short (int): target shorter side in pixels.
        max_size (int): cap of the longer side.

    Returns:
        list[dict]: new dicts (inputs are not modified); images become float32.
    """
    out = []
    for d in batched_inputs:
        img = d['image']
        h, w = img.shape[-2:]
        nh, nw = ResizeShortestEdge.get_output_shape(h, w, short, max_size)
        if (nh, nw) == (h, w):
            out.append(d)
            continue
        nd = dict(d)
        nd['image'] = F.interpolate(
            img[None].float(), size=(nh, nw), mode='bilinear', align_corners=False, antialias=nh < h
        )[0]
        if 'instances' in d:
            nd['instances'] = _resize_instances(d['instances'], (nh, nw), nw / w, nh / h)
        out.append(nd)
    return out

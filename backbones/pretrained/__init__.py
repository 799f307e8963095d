"""Pretrained weights: read, recognise, convert and load the authors' released files and torchvision / timm
state dicts into dynscale backbones (strict both ways), plus the model zoo.

Main entry points: :func:`load_pretrained` (also ``backbones.load_pretrained``), ``backbones.create(name,
pretrained=PATH)``, :func:`convert` (used by ``tools/convert_weights.py``) and :data:`ZOO`.
"""
from .conversion import convert
from .files import CheckpointFileError, SourceFile, read_checkpoint, read_source
from .loader import LoadReport, create_pretrained, load_backbone_state, load_pretrained, load_state
from .normalization import IMAGENET, INCEPTION, UNIT_RANGE, InputNormalization
from .origins import SOURCES, identify
from .release import PROTOCOL_TRANSFORMS, PROTOCOLS, Release, UnsupportedCheckpointError
from .zoo import ZOO, ZooEntry, convert_command, entry_for_file, missing_file_message, zoo_entry

__all__ = ['CheckpointFileError', 'SourceFile', 'read_checkpoint', 'read_source', 'SOURCES', 'LoadReport', 'convert',
           'create_pretrained', 'identify', 'load_backbone_state', 'load_pretrained', 'load_state', 'IMAGENET',
           'INCEPTION', 'UNIT_RANGE', 'InputNormalization', 'PROTOCOLS', 'PROTOCOL_TRANSFORMS', 'Release',
           'UnsupportedCheckpointError', 'ZOO', 'ZooEntry', 'convert_command', 'entry_for_file', 'missing_file_message',
           'zoo_entry']

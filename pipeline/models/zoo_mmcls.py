"""RedNet checkpoints of the involution authors (mmcls format, as mmpretrain also writes them),
into our ``rednet26`` … ``rednet152``.

The file is ``{"meta": ..., "state_dict": ...}`` (the wrapper is unwrapped by the checkpoint
loader) with ``backbone.`` and ``head.`` prefixes. The authors' RedNet (d-li14/involution,
``cls/mmcls/models/backbones/rednet.py``) is ours module for module; the names differ::

    mmcls                                   ours
    backbone.stem.0.conv / .bn              stem.0 / stem.1      (3×3 conv, stride 2)
    backbone.stem.1.conv1.conv / .bn        stem.3.reduce.0 / .1 (the stem's involution)
    backbone.stem.1.conv2.conv              stem.3.span
    backbone.stem.2                         stem.4               (BN)
    backbone.stem.4.conv / .bn              stem.6 / stem.7      (3×3 conv)
    backbone.layerL.J.conv1/bn1/bn2/conv3/bn3  stages.(L-1).J.same
    backbone.layerL.J.conv2.conv1.conv/.bn  stages.(L-1).J.inv.reduce.0 / .1
    backbone.layerL.J.conv2.conv2.conv      stages.(L-1).J.inv.span
    backbone.layerL.J.downsample.0 / .1     stages.(L-1).J.downsample.0 / .1
    head.fc                                 fc

Evaluation preprocessing: the authors' ImageNet test pipeline (resize 256 bilinear, centre crop
224, ImageNet mean and std).
"""

from __future__ import annotations

import re

from .zoo_keymap import KeyMap, imagenet_eval

_BLOCK_SAME = ("conv1", "bn1", "bn2", "conv3", "bn3", "downsample.0", "downsample.1")

KEYMAP = KeyMap(
    source="mmcls/mmpretrain RedNet",
    presets=frozenset({"rednet26", "rednet38", "rednet50", "rednet101", "rednet152"}),
    marker="backbone.stem.0.conv.weight",
    modules={
        "backbone.stem.0.conv": "stem.0",
        "backbone.stem.0.bn": "stem.1",
        "backbone.stem.1.conv1.conv": "stem.3.reduce.0",
        "backbone.stem.1.conv1.bn": "stem.3.reduce.1",
        "backbone.stem.1.conv2.conv": "stem.3.span",
        "backbone.stem.2": "stem.4",
        "backbone.stem.4.conv": "stem.6",
        "backbone.stem.4.bn": "stem.7",
        "head.fc": "fc",
    },
    block=re.compile(r"^backbone\.layer(?P<stage>\d+)\.(?P<index>\d+)\.(?P<rest>.+)$"),
    block_path=lambda stage, index: f"stages.{stage - 1}.{index}",
    block_modules={
        **{name: name for name in _BLOCK_SAME},
        "conv2.conv1.conv": "inv.reduce.0",
        "conv2.conv1.bn": "inv.reduce.1",
        "conv2.conv2.conv": "inv.span",
    },
    eval_config=imagenet_eval("mmcls/mmpretrain RedNet", "bilinear"),
)

"""RegNetY checkpoints as timm distributes the pycls weights (``regnety_006``, ``regnety_040``,
``regnety_160``), into our ``regnety-600mf``, ``regnety-4gf`` and ``regnety-16gf``.

Our RegNetY is torchvision's ``RegNet`` with pycls's widths (see :mod:`.torchvision_teachers`);
timm names the same modules differently::

    timm                          ours (torchvision)
    stem.conv / stem.bn           stem.0 / stem.1
    sS.bB.conv1.conv / .bn        trunk_output.blockS.blockS-(B-1).f.a.0 / f.a.1
    sS.bB.conv2.conv / .bn        ... f.b.0 / f.b.1   (3×3 grouped, carries the stride)
    sS.bB.se.fc1 / se.fc2         ... f.se.fc1 / f.se.fc2
    sS.bB.conv3.conv / .bn        ... f.c.0 / f.c.1
    sS.bB.downsample.conv / .bn   ... proj.0 / proj.1
    head.fc                       fc

Evaluation preprocessing: timm's ``pycls_in1k`` configuration (224 px, bicubic, crop 0.875,
ImageNet mean and std).
"""

from __future__ import annotations

import re

from .zoo_keymap import KeyMap, imagenet_eval

KEYMAP = KeyMap(
    source="timm/pycls RegNetY",
    presets=frozenset({"regnety-600mf", "regnety-4gf", "regnety-16gf"}),
    marker="stem.conv.weight",
    modules={"stem.conv": "stem.0", "stem.bn": "stem.1", "head.fc": "fc"},
    block=re.compile(r"^s(?P<stage>\d+)\.b(?P<index>\d+)\.(?P<rest>.+)$"),
    block_path=lambda stage, index: f"trunk_output.block{stage}.block{stage}-{index - 1}",
    block_modules={
        "conv1.conv": "f.a.0",
        "conv1.bn": "f.a.1",
        "conv2.conv": "f.b.0",
        "conv2.bn": "f.b.1",
        "se.fc1": "f.se.fc1",
        "se.fc2": "f.se.fc2",
        "conv3.conv": "f.c.0",
        "conv3.bn": "f.c.1",
        "downsample.conv": "proj.0",
        "downsample.bn": "proj.1",
    },
    eval_config=imagenet_eval("timm/pycls RegNetY", "bicubic"),
)

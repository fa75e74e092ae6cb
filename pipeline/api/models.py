"""``civt_pipe.load_model``: a civt-pipe checkpoint back as a model, ready to evaluate or tune."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.checkpoint import model_from_checkpoint
from ..models.normalize import NormalizedModel


def load_model(checkpoint: str | Path, *, device: str | torch.device = "cpu") -> NormalizedModel:
    """The model a ``train-teacher``/``train-student``/``train-cakd`` run holds (its run
    directory, which stands for its ``final.pt``; a ``.pt`` checkpoint; or the weights-only
    ``.safetensors``), weights loaded, in eval mode.

    Like :func:`~..models.factory.create_model`'s models it takes images in [0, 1] and
    normalizes them itself; ``model.arch`` and ``model.model_args`` rebuild it. A student
    returns ``{"cls": logits, <teacher>: logits, ...}``, a teacher one logits tensor.

    Raises:
        UserError: not a civt-pipe checkpoint, or damaged (one line).
    """
    model, _meta = model_from_checkpoint(checkpoint, device=device)
    return model

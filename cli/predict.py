"""``civt-pipe predict``: per-image top-k classes (and logits) of a checkpoint, to a file."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.predict.config import PredictConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: PredictConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.runtime.console import info
    from ..pipeline.stages.predict.run import predict

    result = predict(cfg)
    if extras["as_json"]:
        emit_json(result)
        return
    top1 = ", ".join(f"{name} {acc:.2%}" for name, acc in result["top1"].items())
    info(f"{result['rows']} rows → {result['out']} (top-1 over the rows: {top1})")


predict_command = config_command(
    PredictConfig,
    _run,
    doc="Per-image predictions: key, label, top-k classes and probabilities per head (and "
    "logits), as JSONL, CSV, .npz or .npy by OUT's suffix.",
    extra=[JSON_OPTION],
)

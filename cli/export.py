"""``civt-pipe export``: a checkpoint as timm / torchvision weights, safetensors or TorchScript."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.export.config import ExportConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: ExportConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.runtime.console import info
    from ..pipeline.stages.export.run import export

    result = export(cfg)
    if extras["as_json"]:
        emit_json(result)
        return
    info(
        f"{result['source']['arch']} → {result['out']} ({result['form']}, head "
        f"{result['head']}); described in {result['manifest']}"
    )


export_command = config_command(
    ExportConfig,
    _run,
    doc="""Write CHECKPOINT as OUT for other tools: timm's ViT/DeiT names (students; teachers:
    torchvision's), safetensors (every head; evaluate and --init read it) or TorchScript (one
    head). OUT.json beside it gives the form, heads, model arguments and pretrained_cfg.""",
    arguments=("checkpoint", "out"),
    extra=[JSON_OPTION],
)

"""``export --format onnx``: one head's logits from images in [0, 1] as an ONNX graph.

The exporter is torch's dynamo path (``torch.onnx.export(dynamo=True)``: ``torch.export`` then
onnxscript's translation), which runs offline and writes the same bytes for the same weights;
TorchScript-based export is deprecated in torch 2.9+. The batch axis is dynamic (one ``Dim``),
the image side fixed, as in the TorchScript form. onnx and onnxscript come with the ``[onnx]``
extra; a missing one is one line.
"""

from __future__ import annotations

from torch import Tensor, nn

from ...runtime.errors import UserError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def onnx_bytes(module: nn.Module, example: Tensor) -> bytes:
    """The serialized ONNX model of ``module`` (``[B, C, S, S]`` → ``[B, classes]``), traced
    with ``example``; the batch size is free."""
    import torch

    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise UserError(
                f"--format onnx needs the {name} package: pip install 'civt-pipe[onnx]'"
            ) from None
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    return program.model_proto.SerializeToString()

"""Numeric precision of the forward passes: ``--precision`` and ``--compile``, one policy.

``--precision auto`` resolves per device: bf16 on a CUDA GPU that has it (Ampere and later),
fp32 everywhere else. ``bf16``/``fp16`` run the forward (and a training step's loss) under
``torch.autocast``; weights, optimizer state and gradients stay float32, so checkpoints do not
change form. ``fp32`` enters no autocast at all, so an fp32 run computes exactly what it did
before these options existed (the behaviour pins hold). fp16 on the CPU is refused: CPU
kernels in float16 are slow and float16 needs loss scaling, which only pays on a GPU.

Stage one keeps its stored values float32 whatever the precision: the teachers' logits are cast
to float32 before ``log_softmax`` and top-k (``stores.topk.TopKLogits.from_logits``).

Models: convolution and involution teachers are moved to channels-last on CUDA (tensor-core
convolutions want NHWC; on the CPU the layout would change the rounding of an fp32 run for no
gain here), and ``--compile`` wraps the model in ``torch.compile``.

Torch-free at import: the stage configs take :data:`PRECISION_CHOICES` from here and the command
line starts without torch, so the functions import torch where they need it.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from .device import surely_cpu
from .errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
"""A resolved precision: the dtype the forward passes compute in."""

PRECISIONS: tuple[Precision, ...] = get_args(Precision)
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)
"""What ``--precision`` accepts (``auto``: bf16 on a CUDA GPU that has it, else fp32)."""

PRECISION_HELP = (
    "Forward precision: auto (bf16 on a CUDA GPU that has it, else fp32), fp32, bf16, or "
    "fp16 (CUDA only)."
)
COMPILE_HELP = "torch.compile the models (needs a C++ compiler on the CPU, triton on CUDA)."


def _fp16_on_cpu(device: str) -> str:
    return (
        f"--precision fp16 needs a CUDA GPU (the device is {device}); use bf16 or fp32 on the CPU"
    )


def check_precision(choice: str, device: str | None) -> None:
    """Torch-free, before any work: fp16 asked for on a device that is surely the CPU
    (:func:`..runtime.device.surely_cpu`) is the one-line error :func:`resolve_precision`
    gives, which still checks what only torch can tell (bf16 support of a GPU)."""
    if choice == "fp16" and surely_cpu(device):
        raise UserError(_fp16_on_cpu("cpu"))


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """The precision ``choice`` (one of :data:`PRECISION_CHOICES`) means on ``device``.

    ``UserError`` for fp16 on the CPU and for bf16 on a GPU without bfloat16 support.
    """
    import torch

    if choice not in PRECISION_CHOICES:
        raise UserError(
            f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {choice!r}"
        )
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if choice == "auto":
        return "bf16" if bf16_ok else "fp32"
    if choice == "fp16" and not cuda:
        raise UserError(_fp16_on_cpu(str(device)))
    if choice == "bf16" and cuda and not bf16_ok:
        raise UserError(
            f"--precision bf16: the GPU {device} has no bfloat16 support; use fp16 or fp32"
        )
    return "bf16" if choice == "bf16" else "fp16" if choice == "fp16" else "fp32"


@dataclass(frozen=True, slots=True)
class PrecisionPolicy:
    """A resolved precision on one device type: its autocast context and gradient scaler."""

    precision: Precision
    device_type: str
    """``"cpu"`` or ``"cuda"``."""

    @classmethod
    def resolve(cls, choice: str, device: torch.device) -> PrecisionPolicy:
        """:func:`resolve_precision` of ``choice`` on ``device``, as a policy."""
        return cls(resolve_precision(choice, device), device.type)

    def autocast(self) -> AbstractContextManager[object]:
        """The context to run forwards in: ``torch.autocast`` to bf16/fp16, nothing for fp32."""
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 training (float16 gradients underflow without one), else None."""
        import torch

        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)


FP32 = PrecisionPolicy("fp32", "cpu")
"""Plain float32: no autocast and no scaler on any device (the default of the training loop)."""


def check_compile(device: torch.device) -> None:
    """``UserError`` when ``torch.compile`` cannot build kernels for ``device`` here.

    Inductor compiles C++ on the CPU (``$CXX``, else g++ — clang++ on macOS) and triton
    kernels on CUDA; without them the first forward would fail deep inside torch.
    """
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise UserError("--compile on CUDA needs triton (pip install triton); it is missing")
        return
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        raise UserError(
            f"--compile on the CPU needs a C++ compiler ({compiler}, or set CXX); none was found"
        )


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` after :func:`check_compile`; the weights stay ``model``'s own
    (checkpoint and validate ``model``, not the compiled wrapper)."""
    import torch

    check_compile(device)
    compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
    return compiled


def prepare_model(
    model: nn.Module, device: torch.device, *, convolutional: bool, compile: bool
) -> nn.Module:
    """Make ``model`` fast on ``device``; returns the module to call.

    A ``convolutional`` model (a convolution or involution teacher) is moved to channels-last
    in place on CUDA; with ``compile`` the returned module is :func:`compile_model`'s wrapper.
    """
    import torch

    if convolutional and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return compile_model(model, device) if compile else model

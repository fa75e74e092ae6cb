"""Bare compute on in-memory tensors: the teachers' forward pass and one student training step.

These are the yardsticks the pipeline's measured rates are divided by. Each timing is the
median over repeats after warm-up, so one hiccup of a shared machine does not move it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def teachers_forward_seconds(
    teachers: Sequence[nn.Module], images: Tensor, *, repeats: int
) -> float:
    """Seconds for every teacher's forward pass on ``images`` (inference mode), summed."""

    @torch.inference_mode()
    def run() -> None:
        for model in teachers:
            model(images)

    return median_seconds(run, repeats=repeats)


def student_step_seconds(
    arch: str,
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str],
    batch_size: int,
    repeats: int,
    seed: int = 0,
) -> float:
    """Seconds of one training step of ``arch`` (forward, Eq. 5 loss, backward, AdamW).

    Targets are fixed in-memory tensors, so nothing but the student's own step is timed — the
    cost that training from stored logits should add nothing to.
    """
    from civt_pipe.pipeline.losses import civt_loss
    from civt_pipe.pipeline.models.registry import build_student
    from civt_pipe.pipeline.schedule import OptimizerConfig, build_optimizer

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    token_mode = "per-teacher" if teacher_names else "none"
    model = build_student(
        arch,
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        teacher_names=tuple(teacher_names),
        token_mode=token_mode,
    )
    model.train()
    optimizer = build_optimizer(model, OptimizerConfig(lr=1e-3))
    images = torch.rand(batch_size, in_chans, image_size, image_size, generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    label_target = torch.nn.functional.one_hot(labels, num_classes).float()
    probs: Mapping[str, Tensor] = {
        name: torch.softmax(torch.randn(batch_size, num_classes, generator=g), -1)
        for name in teacher_names
    }

    def step() -> None:
        loss = civt_loss(model(images), label_target, probs)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    return median_seconds(step, repeats=repeats)


def online_ideal_ratio(student_step: float, teachers_forward: float) -> float:
    """(student step + teachers' forward) / student step: the speed-up free stored logits give."""
    if student_step <= 0:
        raise ValueError(f"student step time must be positive, got {student_step}")
    return (student_step + teachers_forward) / student_step

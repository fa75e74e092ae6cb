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


def interleaved_median_seconds(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time of each function, timed in turn (A, B, A, B, ...).

    Interleaving exposes every function to the same slice of a shared machine's load, so
    their ratio is far steadier than timings taken one after the other.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bare_forward_views_per_s(
    forward: Callable[[], Any], batch: int, *, threads: Sequence[int], repeats: int
) -> float:
    """Views/s of ``forward`` (the teachers on one batch of ``batch`` views): the fastest over
    the torch thread counts ``threads``, which makes the baseline strict. The thread count in
    force before is restored."""
    before = torch.get_num_threads()
    rates = []
    for n in sorted(set(threads)):
        torch.set_num_threads(n)
        rates.append(batch / median_seconds(forward, repeats=repeats, warmup=1))
    torch.set_num_threads(before)
    return max(rates)


def teachers_forward_fn(teachers: Sequence[nn.Module], images: Tensor) -> Callable[[], None]:
    """Every teacher's forward pass on ``images`` (inference mode), as one call."""

    @torch.inference_mode()
    def run() -> None:
        for model in teachers:
            model(images)

    return run


def student_step_fn(
    arch: str,
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str],
    batch_size: int,
    seed: int = 0,
) -> Callable[[], None]:
    """One training step of ``arch`` (forward, Eq. 5 loss, backward, AdamW), as one call.

    Targets are fixed in-memory tensors, so nothing but the student's own step is timed — the
    cost that training from stored logits should add nothing to. Without ``teacher_names`` the
    student has no distillation tokens and the loss is cross-entropy only.
    """
    from civt_pipe.pipeline.models.factory import create_model
    from civt_pipe.pipeline.train.losses import civt_loss
    from civt_pipe.pipeline.train.schedule import OptimizerConfig, build_optimizer

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    token_mode = "per-teacher" if teacher_names else "none"
    model = create_model(
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

    return step


def online_ideal_ratio(student_step: float, teachers_forward: float) -> float:
    """(student step + teachers' forward) / student step: the speed-up free stored logits give."""
    if student_step <= 0:
        raise ValueError(f"student step time must be positive, got {student_step}")
    return (student_step + teachers_forward) / student_step

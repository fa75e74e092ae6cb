"""Learning-rate schedule and optimizer construction shared by every training loop.

The learning rate is a pure function of the optimizer step (linear warm-up, then cosine decay
to a floor, or step decay at milestones), so a resumed run only needs the step counter to land
on exactly the same value.
Optimizers are built with weight decay only on weight matrices and kernels: biases and
normalization scales (every 1-D parameter) and whatever a model lists in ``no_weight_decay()``
(timm's convention: tokens, position embeddings) are left undecayed, as in DeiT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from .choices import OPTIMIZERS

OptimizerName = Literal["sgd", "adamw"]


@dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    """Linear warm-up followed by a half-cosine decay, indexed by optimizer step."""

    base_lr: float
    """Peak learning rate, reached at the end of warm-up."""
    total_steps: int
    """Number of optimizer steps of the whole run (all epochs)."""
    warmup_steps: int = 0
    """Steps of linear warm-up from ``base_lr / warmup_steps`` up to ``base_lr``."""
    min_lr: float = 0.0
    """Floor the cosine decays to at ``total_steps``."""

    def __post_init__(self) -> None:
        if not self.base_lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.base_lr}")
        if self.total_steps < 1:
            raise ValueError(f"a schedule needs at least one step, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warm-up steps must lie in [0, {self.total_steps}] (the whole run), "
                f"got {self.warmup_steps}"
            )
        if not 0 <= self.min_lr <= self.base_lr:
            raise ValueError(
                f"the minimum learning rate must lie in [0, base lr {self.base_lr}], "
                f"got {self.min_lr}"
            )


@dataclass(kw_only=True, slots=True)
class MultiStepSchedule(ScheduleConfig):
    """The same warm-up, then a step decay instead of the cosine: the rate is multiplied by
    ``gamma`` at each milestone (the classic ResNet recipe, e.g. CAKD's "lr 0.1 ÷10 at epochs
    100 and 150"). A subclass, so a cosine schedule's saved form (and its resume check) is
    unchanged."""

    milestones: tuple[int, ...]
    """Optimizer steps at which the rate drops, ascending (each in ``(W, T]``)."""
    gamma: float = 0.1
    """Factor applied at every milestone."""

    def __post_init__(self) -> None:
        ScheduleConfig.__post_init__(self)
        self.milestones = tuple(int(m) for m in self.milestones)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be distinct and ascending, got {self.milestones}")
        if self.milestones and not (
            self.warmup_steps < self.milestones[0] and self.milestones[-1] <= self.total_steps
        ):
            raise ValueError(
                f"milestones must lie after the warm-up ({self.warmup_steps} steps) and within "
                f"the run ({self.total_steps} steps), got {list(self.milestones)}"
            )
        if not 0 < self.gamma <= 1:
            raise ValueError(f"the decay factor must lie in (0, 1], got {self.gamma}")


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Warm-up: step ``s < W`` gets ``base_lr * (s + 1) / W``, so the last warm-up step is at the
    peak and step 0 is not wasted at zero. Then cosine: ``min + (base - min) * (1 + cos(pi *
    p)) / 2`` with ``p = (s - W) / (T - W)``, which is ``base_lr`` at ``s = W`` and ``min_lr`` at
    ``s = T``. Steps past ``T`` stay at ``min_lr``. A :class:`MultiStepSchedule` decays instead
    to ``max(min_lr, base_lr * gamma ** m)``, ``m`` the milestones at or before ``s``.
    """
    if step < 0:
        raise ValueError(f"the step must be non-negative, got {step}")
    if step < cfg.warmup_steps:
        return cfg.base_lr * (step + 1) / cfg.warmup_steps
    if isinstance(cfg, MultiStepSchedule):
        passed = sum(1 for m in cfg.milestones if step >= m)
        return max(cfg.min_lr, cfg.base_lr * cfg.gamma**passed)
    decay_steps = cfg.total_steps - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.base_lr
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + (cfg.base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Put ``lr`` into every parameter group (call before each ``optimizer.step()``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    """Which optimizer, and its hyper-parameters."""

    name: OptimizerName = "adamw"
    """``sgd`` (with momentum) or ``adamw``."""
    lr: float = 1e-3
    """Initial learning rate; the schedule overrides it every step."""
    weight_decay: float = 0.05
    """Decoupled (AdamW) or L2 (SGD) weight decay; see :func:`param_groups` for what is exempt."""
    momentum: float = 0.9
    """SGD momentum (ignored by AdamW)."""
    nesterov: bool = True
    """SGD Nesterov momentum (ignored by AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (ignored by SGD)."""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.name!r} (use one of {', '.join(OPTIMIZERS)})"
            )
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be non-negative, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (for resolved configs and checkpoints)."""
        return asdict(self)


@runtime_checkable
class HasNoWeightDecay(Protocol):
    """A model that names parameters to leave undecayed beyond the 1-D ones (timm's hook)."""

    def no_weight_decay(self) -> set[str]: ...


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters ``model`` (or any submodule) exempts from weight decay.

    Each module's ``no_weight_decay()`` names its own parameters; they are prefixed with the
    module's path, so a wrapped model (``body.pos_embed``) needs no hook of its own. A name that
    is not a parameter of its module is a bug in that hook, raised at once.
    """
    params = dict(model.named_parameters())
    names: set[str] = set()
    for path, module in model.named_modules():
        if not isinstance(module, HasNoWeightDecay):
            continue
        prefix = f"{path}." if path else ""
        for name in module.no_weight_decay():
            if prefix + name not in params:
                raise ValueError(
                    f"{type(module).__name__}.no_weight_decay() names {name!r}, "
                    "which is not one of its parameters"
                )
            names.add(prefix + name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and an undecayed group.

    Undecayed: every parameter with at most one dimension (biases, normalization scales and
    shifts) and those named by :func:`no_weight_decay_names`; decaying them hurts accuracy for
    no regularization benefit.
    """
    exempt = no_weight_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over ``model``'s trainable parameters."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)

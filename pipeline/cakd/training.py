"""CAKD's training machinery (Liu et al., ACCV 2022): what ``train-cakd`` hands the skeleton.

- :class:`CakdTrainee`: what the student optimizer trains, the student and (method ``cakd``)
  the PCA and GL projectors (:mod:`.projectors`);
- :class:`DiscriminatorTrainer`: the multi-view adversary (:mod:`.adversary`) with its own
  Adam optimizer, stepping on every :data:`.adversary.DISCRIMINATOR_EVERY`-th global step
  before that step's student update;
- :class:`CakdStep`: one batch's loss for the three methods (``none``, ``logit``, ``cakd``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train.loop import StepResult
from .adversary import (
    Discriminator,
    MultiViewConfig,
    discriminator_loss,
    generator_loss,
    multi_view,
)
from .features import StudentTap, TeacherFeatures, ViTFeatureTap, standardized
from .projectors import PCALosses, Projectors, gl_loss


class CakdTrainee(nn.Module):
    """What the student optimizer trains: the student and, for ``cakd``, the two projectors.

    ``forward(x, teacher)`` runs the student once through its :class:`..cakd.features.
    StudentTap` and returns ``(logits, L_proj1's terms, h'_S)``; a projector output is ``None``
    without that projector (``--projectors``), without projectors (methods ``none`` and
    ``logit``) or without teacher features.
    """

    def __init__(self, student: nn.Module, tap: StudentTap, projectors: Projectors | None) -> None:
        super().__init__()
        self.student = student
        self.tap = tap  # not a module: it only hooks the student
        self.projectors = projectors

    def forward(
        self, x: Tensor, teacher: TeacherFeatures | None = None
    ) -> tuple[Tensor, PCALosses | None, Tensor | None]:
        feature_map, logits = self.tap(x)
        if self.projectors is None or teacher is None:
            return logits, None, None
        pca, projected = self.projectors(feature_map, teacher)
        return logits, pca, projected


@dataclass(kw_only=True)
class DiscriminatorTrainer:
    """The adversary of the multi-view part with its own optimizer and step clock."""

    net: Discriminator
    optimizer: torch.optim.Optimizer
    every: int
    """Update on every ``every``-th global step (1-based: steps ``every``, ``2·every``...)."""
    clock: int = 0
    """Global steps taken so far (restored from the resumed run's ``global_step``)."""
    world_size: int = 1

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's weights and its optimizer (for the resumable checkpoint)."""
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state_dict` saved."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def tick(self, teacher_tokens: Tensor, student_tokens: Tensor) -> Tensor:
        """``L_MAD`` on this step's tokens (the student's detached); on an update step the
        discriminator also learns from it (gradients averaged over the ranks). Returns the loss
        for the records."""
        self.clock += 1
        update = self.clock % self.every == 0
        student_tokens = student_tokens.detach()
        if not update:
            with torch.no_grad():
                return discriminator_loss(self.net, teacher_tokens, student_tokens)
        self.net.requires_grad_(True)
        try:
            loss = discriminator_loss(self.net, teacher_tokens, student_tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world_size > 1:
                for p in self.net.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= self.world_size
            self.optimizer.step()
        finally:
            # Frozen between updates: L_MVG passes gradients through it to the student only.
            self.net.requires_grad_(False)
        return loss.detach()


# ------------------------------------------------------------------------------------ the step


@dataclass(kw_only=True)
class CakdStep:
    """One batch of ``train-cakd``: the chosen method's loss on ``(images, labels)``.

    Logs ``loss`` and ``loss_ce`` always, ``loss_kd`` (logit), and for cakd ``loss_proj1`` with
    its terms ``loss_attn`` and ``loss_value`` (PCA projector) and ``loss_proj2`` (GL
    projector), plus ``loss_mvg`` and ``loss_mad`` with the multi-view part.
    """

    method: str
    teacher: nn.Module
    device: torch.device
    teacher_tap: ViTFeatureTap | None = None
    """The teacher's features (method cakd)."""
    feature_norm: bool = True
    """Standardize ``h_T`` and ``V_T`` per token before the projector losses."""
    discriminator: DiscriminatorTrainer | None = None
    """With the multi-view part only."""
    views: MultiViewConfig | None = None
    """The multi-view generator's settings (multi-view part only)."""
    lambda_mvg: float = 1.0
    tau: float = 4.0
    alpha: float = 0.9
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        images = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        terms: dict[str, Tensor] = {}
        if self.method == "none":
            logits = model(images)[0]
            ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            loss = ce
        elif self.method == "logit":
            from ..train.losses import distillation_kl

            with torch.no_grad():
                teacher_logits = self.teacher(images).float()
            logits = model(images)[0]
            ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            kd = distillation_kl(logits, torch.softmax(teacher_logits / self.tau, -1), self.tau)
            loss = (1 - self.alpha) * ce + self.alpha * kd
            terms["loss_kd"] = kd
        else:
            loss, ce, logits = self._cakd(model, images, labels, terms)
        top1 = (logits.detach().argmax(1) == labels).double().mean()
        return StepResult(
            loss=loss,
            terms={"loss": loss, "loss_ce": ce, **terms, "top1": top1},
            batch_size=len(labels),
        )

    def _cakd(
        self, model: nn.Module, images: Tensor, labels: Tensor, terms: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        assert self.teacher_tap is not None
        with torch.no_grad():
            teacher = self.teacher_tap(images)  # the teacher always sees the clean view
        if self.feature_norm:
            teacher = standardized(teacher)
        student_input = images
        if self.discriminator is not None and self.views is not None:
            # The transforms draw from a (CPU) generator seeded off the step's torch seed (the
            # loop re-seeds torch before every step): a view depends on the step's coordinates.
            generator = torch.Generator()
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            student_input = multi_view(images, self.views, generator)
        logits, pca, projected = model(student_input, teacher)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = ce
        if pca is not None:
            loss = loss + pca.total
            terms.update(loss_proj1=pca.total, loss_attn=pca.attn, loss_value=pca.value)
        if projected is not None:
            l_proj2 = gl_loss(projected, teacher.tokens)
            loss = loss + l_proj2
            terms["loss_proj2"] = l_proj2
        if self.discriminator is not None:
            assert projected is not None  # the config refuses multi-view without GL
            terms["loss_mad"] = self.discriminator.tick(teacher.tokens, projected)
            l_mvg = generator_loss(self.discriminator.net, projected)
            loss = loss + self.lambda_mvg * l_mvg
            terms["loss_mvg"] = l_mvg
        return loss, ce, logits


@dataclass(kw_only=True)
class CakdExtraState:
    """What ``last.pt`` holds beyond the student and its optimizer: the projectors, and the
    discriminator with its optimizer (``final.pt`` holds the student alone)."""

    projectors: Projectors | None
    discriminator: DiscriminatorTrainer | None

    def state_dict(self) -> dict[str, Any]:
        """The projectors' and the discriminator's state (what is present)."""
        out: dict[str, Any] = {}
        if self.projectors is not None:
            out["projectors"] = self.projectors.state_dict()
        if self.discriminator is not None:
            out["discriminator"] = self.discriminator.state_dict()
        return out

    def restore(self, state: Mapping[str, Any], global_step: int) -> None:
        """Put back what :meth:`state_dict` saved; the discriminator's clock resumes at
        ``global_step``."""
        if self.projectors is not None:
            self.projectors.load_state_dict(state["projectors"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator.clock = global_step

"""What cross-architecture distillation reads from its two networks, by forward hooks.

- :class:`ViTFeatureTap`: a ViT teacher's patch tokens ``h_T`` after one block and that block's
  attention inputs ``Q_T, K_T, V_T`` (heads concatenated), plus its logits, from one forward in
  eval mode without gradients. Our ViTs (:class:`..models.vit.VisionTransformer`, also inside
  the ``vit-nano``/``deit-*`` teachers and CivT) and torchvision's ``VisionTransformer``
  (``vit-b-16``, ``vit-l-16``) are understood.
- :class:`StudentTap`: a CNN student's feature map ``h_S`` and its logits, from the one training
  forward (gradients flow). Which map: the one on the teacher's patch grid
  (:func:`student_layer_rule`), else the last one before global pooling.

Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022 (arXiv 2207.05273); see
docs/method.md for the equations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchvision.models.vision_transformer import EncoderBlock

from ..models.heads import inference_head, prediction
from ..models.vit import Block, VisionTransformer
from ..runtime.errors import UserError


@dataclass(frozen=True)
class TeacherFeatures:
    """One batch of teacher features (all detached: the teacher is not trained).

    Args:
        tokens: ``h_T`` ``[B, N, D]``, the patch tokens output by the tapped block (before the
            final norm; no class or distillation tokens).
        q: ``Q_T`` ``[B, N, D]``, the block's attention queries of the patch positions, heads
            concatenated (head ``i`` is ``q[..., i*d:(i+1)*d]``, ``d = D / heads``).
        k: ``K_T``, as ``q``.
        v: ``V_T``, as ``q``.
        logits: the teacher's logits ``[B, C]`` (for logit distillation).
    """

    tokens: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    logits: Tensor


def _model_name(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    return str(arch) if arch is not None else type(model).__name__


def find_vit(model: nn.Module) -> VisionTransformer | tvm.VisionTransformer | None:
    """The first vision transformer inside ``model`` (itself included), or None."""
    for module in model.modules():
        if isinstance(module, VisionTransformer | tvm.VisionTransformer):
            return module
    return None


class ViTFeatureTap:
    """Forward hooks on one block of a ViT teacher; calling it runs the teacher once.

    The teacher is put in eval mode and run without gradients. Hooks stay registered for the
    tap's life (:meth:`remove` takes them off).

    Args:
        teacher: a model containing a vision transformer (e.g. ``create_model("deit-ti", ...)``
            or one loaded with ``NAME=ARCH:CKPT``).
        block: the block to tap, Python-style (``-1``: the last).

    Raises:
        UserError: ``teacher`` contains no vision transformer, or ``block`` is out of range.

    Attributes:
        grid: the patch grid ``(h, w)`` (``N = h·w``).
        patch_size: the side of one patch in pixels.
        dim: token width ``D``.
        num_heads: attention heads of the tapped block.
        num_prefix_tokens: tokens before the patches (class, distillation) that are dropped.
        block: the tapped block's index, counted from 0.
    """

    def __init__(self, teacher: nn.Module, *, block: int = -1) -> None:
        vit = find_vit(teacher)
        name = _model_name(teacher)
        if vit is None:
            raise UserError(
                f"teacher {name} is not a vision transformer: cross-architecture distillation "
                "reads ViT features (vit-nano, deit-ti, deit-s, vit-b-16, vit-l-16)"
            )
        blocks: list[nn.Module]
        if isinstance(vit, VisionTransformer):
            blocks = list(vit.blocks)
            self.num_prefix_tokens = vit.num_prefix_tokens
            self.dim = vit.embed_dim
            num_positions = vit.pos_embed.shape[1]
        else:
            blocks = list(vit.encoder.layers)
            self.num_prefix_tokens = 1
            self.dim = int(vit.hidden_dim)
            num_positions = vit.encoder.pos_embedding.shape[1]
        depth = len(blocks)
        if not -depth <= block < depth:
            raise UserError(
                f"block {block} is out of range for teacher {name}, which has {depth} blocks "
                f"(valid: {-depth}..{depth - 1})"
            )
        self.block = block % depth
        side = math.isqrt(num_positions - self.num_prefix_tokens)
        self.grid = (side, side)
        self.patch_size = int(vit.patch_size)
        self.teacher = teacher.eval()
        self._seen: dict[str, Tensor] = {}
        tapped = blocks[self.block]
        hooks: list[RemovableHandle] = [tapped.register_forward_hook(self._keep("tokens"))]
        if isinstance(tapped, Block):
            self.num_heads = tapped.attn.num_heads
            hooks.append(tapped.attn.qkv.register_forward_hook(self._keep("qkv")))
        else:
            assert isinstance(tapped, EncoderBlock)
            attention = tapped.self_attention
            self.num_heads = int(attention.num_heads)

            def project(_module: nn.Module, _args: Any, out: Tensor) -> None:
                # torchvision's MultiheadAttention fuses the projection into its kernel: redo
                # it from the attention's input (ln_1's output) with the attention's weights.
                self._seen["qkv"] = F.linear(out, attention.in_proj_weight, attention.in_proj_bias)

            hooks.append(tapped.ln_1.register_forward_hook(project))
        self._hooks = hooks

    def _keep(self, key: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
            self._seen[key] = out

        return hook

    def remove(self) -> None:
        """Take the hooks off the teacher."""
        for handle in self._hooks:
            handle.remove()

    @torch.no_grad()
    def __call__(self, x: Tensor) -> TeacherFeatures:
        """Run the teacher on images ``x`` (in [0, 1]) and return the tapped features."""
        self._seen.clear()
        out = self.teacher(x)
        logits = prediction(out, inference_head(self.teacher))
        p = self.num_prefix_tokens
        tokens = self._seen["tokens"][:, p:]
        q, k, v = self._seen["qkv"][:, p:].chunk(3, dim=-1)
        self._seen.clear()
        return TeacherFeatures(tokens=tokens, q=q, k=k, v=v, logits=logits)


def standardized(features: TeacherFeatures) -> TeacherFeatures:
    """The teacher's features with ``h_T`` and ``V_T`` standardized per token (zero mean, unit
    variance over the width, a layer norm without affine parameters); ``Q_T, K_T`` (the
    attention maps) and the logits unchanged.

    Why: the regression targets of ``L_proj2`` and of the value relation in ``L_proj1`` are
    the raw activations of a trained ViT, whose scale grows with depth and training (a
    digits ``vit-nano``'s last block: ``L_proj2`` ≈ 90 against a cross-entropy ≈ 2), so
    unscaled MSE terms swamp the label loss. The paper leaves the scale open; standardized
    targets keep every term near 1 whatever the teacher.
    """
    return TeacherFeatures(
        tokens=F.layer_norm(features.tokens, features.tokens.shape[-1:]),
        q=features.q,
        k=features.k,
        v=F.layer_norm(features.v, features.v.shape[-1:]),
        logits=features.logits,
    )


_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class ProbedModule:
    """One module's last output in a probe forward (see :func:`student_layer_rule`)."""

    name: str
    shape: tuple[int, ...]
    order: int
    """When it (last) finished, counted over the forward."""


def student_layer_rule(
    probed: list[ProbedModule], last_map: str, grid: tuple[int, int]
) -> ProbedModule | None:
    """The student map on the teacher's grid, or None when no module's map has that size.

    Among the modules whose output is a ``[B, c, h, w]`` map with ``(h, w) == grid`` that finish
    no later than the last feature map ``last_map``, the **shallowest** (fewest dots in its
    name: a stage such as ResNet's ``layer3`` rather than a layer inside one of its blocks)
    and, among those, the **last to finish**. ResNet-18/50 at 224 px with a 16-px-patch ViT
    (grid 14): ``layer3`` (stride 16, the paper's 14 × 14 map); MobileNetV2: ``features.13``.
    """
    limit = next(p.order for p in probed if p.name == last_map)
    matches = [p for p in probed if p.order <= limit and p.shape[2:] == tuple(grid)]
    if not matches:
        return None
    depth = min(p.name.count(".") for p in matches)
    return max((p for p in matches if p.name.count(".") == depth), key=lambda p: p.order)


class StudentTap:
    """A CNN student's feature map ``h_S``, caught by a forward hook.

    At construction one probe forward (eval mode, no gradients, a zero batch of
    ``image_size`` images) records every module's output. The student's **last feature map**
    is the output of the last module to finish with a ``[B, c, h', w']`` output, not counting
    global pooling, after which no other module outputs more than two dimensions (pooling,
    flatten, dropout, the classifier); a ViT or Mixer, whose last 4-D output is its patch
    embedding followed by token blocks, has none and is refused. The tapped map is then:

    - ``layer`` given: that module's output (any 4-D map of the student);
    - else, with the teacher's ``grid``: the map :func:`student_layer_rule` finds on that grid
      (no resizing), or the last feature map when no module has that size (:attr:`resized`:
      the projectors resize it);
    - else the last feature map.

    Args:
        student: the student model (not its DDP wrapper: hooks go on its modules).
        in_chans: input channels.
        image_size: input side.
        grid: the teacher's patch grid ``(h, w)``.
        layer: a module name in ``student`` (``--student-layer``); None: the rule above.

    Raises:
        UserError: the student has no spatial feature map, or ``layer`` names no module with
            a ``[B, c, h, w]`` output.

    Attributes:
        channels: ``c``.
        grid: ``(h', w')`` at ``image_size``.
        module_name: the hooked module's name in ``student``.
        resized: True when a teacher grid was given and the map is not on it.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        in_chans: int,
        image_size: int,
        grid: tuple[int, int] | None = None,
        layer: str | None = None,
    ) -> None:
        self.student = student
        finished: list[tuple[str, nn.Module, Tensor]] = []
        names = {module: name for name, module in student.named_modules()}

        def record(module: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                finished.append((names[module], module, out))

        probes = [m.register_forward_hook(record) for m in student.modules()]
        was_training = student.training
        try:
            student.eval()
            with torch.no_grad():
                device = next(student.parameters()).device
                student(torch.zeros(2, in_chans, image_size, image_size, device=device))
        finally:
            for handle in probes:
                handle.remove()
            student.train(was_training)
        name = _model_name(student)
        last_map, shape = self._feature_module(finished, name)
        # A module called more than once (a ReLU shared inside a block) keeps its last call:
        # the hook below sees every call and keeps the last one too.
        last_call = {n: (i, m, o) for i, (n, m, o) in enumerate(finished)}
        probed = [
            ProbedModule(name=n, shape=tuple(o.shape), order=i)
            for n, (i, m, o) in last_call.items()
            if o.ndim == 4 and not isinstance(m, _GLOBAL_POOLS)
        ]
        probed.sort(key=lambda p: p.order)
        self.resized = False
        chosen: ProbedModule | None
        if layer is not None:
            chosen = next((p for p in probed if p.name == layer), None)
            if chosen is None:
                stages = ", ".join(p.name for p in probed if "." not in p.name) or "none"
                raise UserError(
                    f"--student-layer {layer} is not a module of student {name} with a "
                    f"[B, c, h, w] output (its top-level ones: {stages})"
                )
        elif grid is not None:
            chosen = student_layer_rule(probed, last_map, grid)
            if chosen is None:
                chosen = next(p for p in probed if p.name == last_map)
                self.resized = True
        else:
            chosen = ProbedModule(name=last_map, shape=shape, order=0)
        self.module_name = chosen.name
        self.channels = chosen.shape[1]
        self.grid = (chosen.shape[2], chosen.shape[3])
        self._map: Tensor | None = None
        hooked = student.get_submodule(self.module_name)
        self._hook = hooked.register_forward_hook(self._keep)

    @staticmethod
    def _feature_module(
        finished: list[tuple[str, nn.Module, Tensor]], name: str
    ) -> tuple[str, tuple[int, ...]]:
        maps = [
            i
            for i, (_, module, out) in enumerate(finished)
            if out.ndim == 4 and not isinstance(module, _GLOBAL_POOLS)
        ]
        if maps:
            found, _, out = finished[maps[-1]]
            later = finished[maps[-1] + 1 :]
            # Containers of the found module finish after it and pass its map on.
            ancestors = {n for n, _, _ in later if n == "" or found.startswith(n + ".")}
            tokens = [
                n
                for n, m, o in later
                if n not in ancestors and o.ndim > 2 and not isinstance(m, _GLOBAL_POOLS)
            ]
            if not tokens:
                return found, tuple(out.shape)
        raise UserError(
            f"student {name} has no spatial feature map (a CNN's last [B, c, h, w] output before "
            "its global pooling); cross-architecture distillation needs a CNN student"
        )

    def _keep(self, _module: nn.Module, _args: Any, out: Tensor) -> None:
        self._map = out

    def remove(self) -> None:
        """Take the hook off the student."""
        self._hook.remove()

    def __call__(self, x: Tensor, *, through: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """One forward of the student on ``x``: ``(feature map [B, c, h', w'], logits [B, C])``.

        Args:
            x: images in [0, 1].
            through: the module to call instead of the student itself, e.g. its DDP wrapper
                (it must run the same student modules).
        """
        self._map = None
        out = (through or self.student)(x)
        feature_map = self._map
        self._map = None
        if feature_map is None:
            raise RuntimeError(f"the hooked module {self.module_name} did not run")
        return feature_map, prediction(out, inference_head(self.student))

"""``civt-pipe evaluate``: top-1/top-5 accuracy of any checkpoint we make, on a shard set.

Teachers have one output, reported as the head ``"logits"``. Students report every head —
``"cls"``, one per teacher token, and ``"mean"`` (the mean of the distinct heads, as in the
official Co-advise code) — with the model's inference head as the headline figure (the class
token for most students, the mean of the heads for the aligned CivT; see docs/models.md).

The pass itself is :func:`..train.validate.evaluate_model`, shared with the training stages'
epoch-end validation; ``--store`` adds :mod:`.teacher_agreement` as an observer of that pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...augment.config import RENDER_DEVICE_CHOICES, RENDER_DEVICE_HELP
from ...data.imageio import DECODER_CHOICES, DECODER_HELP
from ...data.shard_set import check_shard_spec
from ...models.teacher_spec import (
    ARCH_HELP,
    CHECKPOINT_WITH_ARCH_HELP,
    TeacherSpec,
    check_model_source,
    preflight_model_source,
)
from ...runtime.console import warn
from ...runtime.device import check_device
from ...runtime.errors import UserError
from ...runtime.options import MAX_THREADS, MAX_WORKERS, check_choices, check_numbers, option
from ...runtime.precision import (
    COMPILE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    check_precision,
)

if TYPE_CHECKING:
    from ...data.zoo_eval import ZooEval


@dataclass(kw_only=True, slots=True)
class EvaluateConfig:
    """What ``civt-pipe evaluate`` runs."""

    checkpoint: Path | None = option(None, help=CHECKPOINT_WITH_ARCH_HELP)
    arch: str | None = option(None, help=ARCH_HELP)
    preprocess: str = option(
        "ours",
        help="ours: resize to side/0.875 (bilinear), centre crop; zoo: a zoo teacher's own "
        "eval transform (its input size, crop_pct, interpolation; as timm's create_transform).",
        choices=("ours", "zoo"),
    )
    data: str = option(help="Shards to evaluate on: a directory or a brace pattern.")
    batch_size: int = option(256, help="Samples per batch.", minimum=1)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    # No resume here: another precision is just another measurement (reported in the result).
    precision: str = option("auto", help=PRECISION_HELP, choices=PRECISION_CHOICES)
    compile: bool = option(False, help=COMPILE_HELP)
    workers: int = option(0, help="Data-loading processes.", minimum=0, maximum=MAX_WORKERS)
    decoder: str = option("auto", help=DECODER_HELP, choices=DECODER_CHOICES)
    render_device: str = option("auto", help=RENDER_DEVICE_HELP, choices=RENDER_DEVICE_CHOICES)
    threads: int | None = option(
        None,
        help="Torch CPU threads (default: free cores minus workers).",
        minimum=1,
        maximum=MAX_THREADS,
    )
    # Text, not Path: a URL (s3://bucket/s.zarr) must keep its "//".
    store: str | None = option(
        None,
        help="dump-logits store of these shards (a directory or URL): also report KL to "
        "each teacher.",
    )
    # The upper end of the range, V of the store, is checked once the store is open.
    store_views: int | None = option(
        None, help="Use only the store's first N views (default all).", minimum=1
    )
    noise: float = option(
        0.0,
        help="Add Gaussian noise of this std to every image in [0, 1] (before the model's "
        "normalization; clipped back to [0, 1]): a noisy copy of the data.",
        minimum=0,
    )
    noise_seed: int = option(0, help="Seed of the --noise draws.", minimum=0)

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)
        check_model_source(self.checkpoint, self.arch)
        if self.store is not None:
            self.store = os.fspath(self.store)
        check_numbers(self)
        check_choices(self)
        if self.store_views is not None and self.store is None:
            raise UserError("--store-views needs --store")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line before it
        imports the stage)."""
        # Settings before paths: a wrong device or precision is named whatever the paths say.
        check_device(self.device)
        check_precision(self.precision, self.device)
        preflight_model_source(self.checkpoint, self.arch)
        check_shard_spec(self.data)


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Load ``cfg.checkpoint``, check it fits the data, and return :func:`evaluate_model`'s dict
    plus ``checkpoint``, ``arch`` and ``kind`` (and, with ``cfg.store``, ``kl_to_teachers``:
    ``{head: {teacher: KL}}`` from :func:`.teacher_agreement.
    teacher_agreement`, and ``store``; for a ``train-cakd`` student, ``transferability``: the
    mean cosine of its and its teacher's class probabilities, :mod:`...cakd.transferability`)."""
    from ...augment.render_device import resolve_render_device
    from ...data.imageio import resolve_decoder
    from ...data.shard_set import resolve_complete_shards
    from ...runtime.device import cpu_threads, resolve_device
    from ...runtime.precision import PrecisionPolicy, check_compile
    from ...train.validate import evaluate_model, load_for_data

    device = resolve_device(cfg.device)
    policy = PrecisionPolicy.resolve(cfg.precision, device)
    if cfg.compile:
        check_compile(device)
    decoder = resolve_decoder(cfg.decoder, device_type=device.type, workers=cfg.workers)
    render_device = resolve_render_device(cfg.render_device, device, workers=cfg.workers)
    shard_set = resolve_complete_shards(cfg.data)
    model, scored_model, meta, checkpoint = load_for_data(
        cfg.checkpoint, shard_set, device=device, compile=cfg.compile, arch=cfg.arch
    )
    zoo = _zoo_view(checkpoint, meta) if cfg.preprocess == "zoo" else None
    with cpu_threads(cfg.threads, cfg.workers, device):
        agreement = None
        if cfg.store is not None:
            from .teacher_agreement import teacher_agreement

            # Before the accuracy pass, so a store that does not fit fails at once.
            agreement = teacher_agreement(
                model,
                meta,
                shard_set,
                store=cfg.store,
                data=cfg.data,
                views=cfg.store_views,
                batch_size=cfg.batch_size,
                device=device,
                decoder=cfg.decoder,
                render_device=cfg.render_device,
            )
        scored: Any = scored_model
        observers = _transferability(model, meta, shard_set, device, cfg)
        if cfg.noise > 0:
            from .noise import GaussianNoise

            scored = GaussianNoise(scored, std=cfg.noise, seed=cfg.noise_seed)
        result = evaluate_model(
            scored,
            shard_set,
            image_size=int(meta["image_size"]),
            batch_size=cfg.batch_size,
            device=device,
            workers=cfg.workers,
            precision=policy,
            decoder=decoder,
            observers=observers,
            zoo=zoo,
            render_device=str(render_device),
        )
    result.update(
        checkpoint=str(checkpoint),
        arch=meta["arch"],
        kind=meta["kind"],
        precision=policy.precision,
        preprocess=cfg.preprocess,
    )
    if cfg.noise > 0:
        result.update(noise=cfg.noise, noise_seed=cfg.noise_seed)
    if agreement is not None:
        result.update(kl_to_teachers=agreement, store=str(cfg.store))
    return result


def _zoo_view(checkpoint: Path, meta: dict[str, Any]) -> ZooEval:
    """The zoo teacher's own evaluation view; a model without a ``pretrained_cfg`` is one line."""
    from ...data.zoo_eval import ZooEval

    pretrained = meta.get("pretrained_cfg")
    if not pretrained:
        raise UserError(
            f"--preprocess zoo needs a zoo teacher (timm:MODEL, or a published RegNetY/RedNet "
            f"file with --arch); {checkpoint} holds a {meta['arch']} without one"
        )
    view = ZooEval.from_config(pretrained)
    if view.size != int(meta["image_size"]):
        raise UserError(
            f"--preprocess zoo: {meta['arch']} was pretrained at {view.size} px but is built "
            f"for {meta['image_size']} px"
        )
    return view


def _transferability(
    model: Any, meta: dict[str, Any], shard_set: Any, device: Any, cfg: EvaluateConfig
) -> tuple[Any, ...]:
    """For a ``train-cakd`` student: the observer of its transferability cosine against the
    teacher its run names (:mod:`...cakd.transferability`), seeing the same (noisy) images;
    none for other checkpoints, or when that teacher's file is gone (a warning)."""
    from ...cakd.transferability import TransferabilityObserver, recorded_teacher
    from ...models.heads import inference_head
    from ...replay.online_teachers import load_online_teachers
    from ...train.validate import TEACHER_HEAD

    spec = recorded_teacher(meta)
    if spec is None:
        return ()
    checkpoint = TeacherSpec.parse(spec).checkpoint  # None: a zoo teacher (timm:MODEL)
    if checkpoint is not None and not Path(checkpoint).exists():
        warn(f"the teacher of {cfg.checkpoint} ({spec}) is not there: no transferability")
        return ()
    online = load_online_teachers(
        [spec],
        device,
        num_classes=shard_set.num_classes,
        in_chans=shard_set.channels,
        image_size=int(meta["image_size"]),
    )
    teacher: Any = next(iter(online.models.values()))
    if cfg.noise > 0:
        from .noise import GaussianNoise

        # The same seed draws the same noise, batch for batch: both see one noisy copy.
        teacher = GaussianNoise(teacher, std=cfg.noise, seed=cfg.noise_seed)
    head = TEACHER_HEAD if meta["kind"] == "teacher" else inference_head(model)
    return (TransferabilityObserver(teacher=teacher, head=head),)

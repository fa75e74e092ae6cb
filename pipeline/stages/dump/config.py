"""``dump-logits`` configuration: :class:`DumpConfig` and the defaults that depend on the data
and the machine (augmentation recipe, forward threads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...augment.config import (
    MIN_IMAGE_SIZE,
    PRESET_CHOICES,
    RENDER_DEVICE_CHOICES,
    RENDER_DEVICE_HELP,
    AugmentConfig,
    preset,
)
from ...data.imageio import DECODER_CHOICES, DECODER_HELP, ON_ERROR_MODES, OnError
from ...data.shard_set import check_shard_spec
from ...models.teacher_spec import TeacherSpec
from ...runtime.device import check_device
from ...runtime.errors import UserError
from ...runtime.options import MAX_THREADS, MAX_WORKERS, check_choices, check_numbers, option
from ...runtime.precision import (
    COMPILE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    check_precision,
)


@dataclass(kw_only=True)
class DumpConfig:
    """Everything ``dump-logits`` needs. The same config on an incomplete store resumes it."""

    data: str = option(help="Shards: a directory or a brace pattern.")
    teachers: tuple[TeacherSpec, ...] = option(
        help="NAME=ARCH:CHECKPOINT or NAME=timm:MODEL[:WEIGHTS], once per teacher (e.g. "
        "cnn=resnet18:cnn.pt, cnn=regnety-600mf:regnety_006.safetensors).",
        flag="--teacher",
    )
    # Text, not Path: an fsspec URL (s3://bucket/s.zarr) must keep its "//".
    out: str = option(help="The zarr logit store to write: a directory or a URL (s3://...).")
    # 10 = train-student's default --epochs: with the defaults every epoch gets a fresh view,
    # as online distillation would (docs/study.md: the views plan measured the rule).
    views: int = option(
        10,
        help="Augmented views per image (V); stage two replays view e mod V in epoch e, so "
        "V = the student epochs you plan gives a fresh view every epoch.",
        minimum=1,
    )
    topk: int = option(10, help="Logits kept per view and teacher (k).", minimum=1)
    seed: int = option(0, help="Augmentation seed.", minimum=0)
    batch_size: int = option(256, help="Views per teacher forward pass.", minimum=1)
    # On the CPU the teachers' forward is the work and rendering is small beside it (digits at
    # 16 px: 7 % of the forward's CPU), so no worker process holds a core: a read-ahead thread
    # renders while the forward runs on every core (2 idle cores: 1.4x the views/s of one worker
    # and one forward thread). On CUDA the CPU only renders: one worker process does it.
    workers: int | None = option(
        None,
        help="DataLoader processes decoding and augmenting (0: a read-ahead thread of this "
        "process) [default: 0 on the CPU or with nvjpeg / GPU rendering, else 1 on CUDA].",
        minimum=0,
        maximum=MAX_WORKERS,
    )
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    # The resolved precision is a store attribute: a resumed dump must run at the same one.
    precision: str = option("auto", help=PRECISION_HELP, choices=PRECISION_CHOICES)
    compile: bool = option(False, help=COMPILE_HELP)
    # Recorded in the store (resolved): replay must decode with the same decoder.
    decoder: str = option("auto", help=DECODER_HELP, choices=DECODER_CHOICES)
    # Recorded in the store (its type): replay must render on the same kind of device.
    render_device: str = option("auto", help=RENDER_DEVICE_HELP, choices=RENDER_DEVICE_CHOICES)
    on_error: OnError = option(
        "fail",
        help="An undecodable sample stops the dump or is skipped (its key recorded).",
        choices=ON_ERROR_MODES,
    )
    overwrite: bool = option(False, help="Replace an existing store.")
    aug: str = option(
        "auto",
        help="Augmentation preset: auto (small up to 32 px, else deit), deit, small, crop-flip.",
        choices=PRESET_CHOICES,
    )
    augment: AugmentConfig | None = option(
        None,
        help="An explicit recipe; overrides aug (its image size must match the teachers').",
        flag="",
    )
    chunk_rows: int | None = option(
        None, help="Store rows per chunk [default: one chunk per shard].", minimum=1
    )
    image_size: int | None = option(
        None,
        help="Input size for teachers given as bare torchvision weights.",
        minimum=MIN_IMAGE_SIZE,
    )
    # More threads than free cores makes every forward wait on preempted threads: on a busy
    # 2-core machine 2 threads next to a worker ran the nano teachers ~10x slower than 1.
    threads: int | None = option(
        None,
        help="CPU threads for the teachers [default: free cores minus workers, unless "
        "OMP_NUM_THREADS is set].",
        minimum=1,
        maximum=MAX_THREADS,
    )
    progress: bool = option(True, help="Draw progress bars.", flag="")

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)
        if not self.teachers:
            raise UserError("dump-logits needs at least one --teacher NAME=ARCH:CHECKPOINT")
        names = [t.name for t in self.teachers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"teacher name {dup[0]!r} is given twice; names must be distinct")
        if not self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2**63), got {self.seed}")
        self.out = os.fspath(self.out)

    def loader_workers(self, device_type: str) -> int:
        """``--workers`` made concrete for a run whose teachers are on ``device_type``."""
        if self.workers is not None:
            return self.workers
        # nvjpeg and GPU rendering run in the main process.
        on_gpu = self.decoder == "nvjpeg" or self.render_device == "cuda"
        return 1 if device_type == "cuda" and not on_gpu else 0

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line before it
        imports the stage)."""
        # Settings before paths: a wrong device or precision is named whatever the paths say.
        check_device(self.device)
        check_precision(self.precision, self.device)
        check_shard_spec(self.data)
        for spec in self.teachers:
            spec.preflight()


def resolve_augment(cfg: DumpConfig, image_size: int) -> AugmentConfig:
    """The recipe of this dump: the explicit config, or the named preset (``auto`` included)."""
    if cfg.augment is not None:
        if cfg.augment.image_size != image_size:
            raise UserError(
                f"augment image_size {cfg.augment.image_size} differs from the teachers' "
                f"input size {image_size}"
            )
        return cfg.augment
    return preset(cfg.aug, image_size)

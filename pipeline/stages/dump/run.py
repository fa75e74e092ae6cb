"""Stage one, ``dump-logits``: every teacher on every augmented view, top-k logits into a store.

Flow (docs/architecture.md, docs/dump.md): check everything a user can get wrong before any work
(options, shards complete and readable, teachers) — ``--overwrite`` deletes nothing before that;
rank 0 takes the store's writer lock, then creates the store (or checks that an existing incomplete
one was made by the same command, and resumes it);
the missing shards are split over ranks; DataLoader workers (or, with ``--workers 0``, a
read-ahead thread) decode and render mix blocks (:mod:`.data` on the one stream,
:mod:`...data.streams`) while the main process runs the teachers; each shard is written with
one ``write_shard`` once all its rows are in, on a writer thread (:mod:`.writer`); rank 0
finalizes after a barrier, with each teacher's top-1 on the views read back from the store (so a
resumed run reports the whole dataset).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ....stores.errors import StoreDamagedError
from ....stores.location import StoreLocation
from ....stores.lock import WriterLock
from ....stores.logit_store import LogitStore, StoreVersionError
from ....stores.schema import FieldSpec, StoreSpec
from ...augment.config import AugmentConfig
from ...augment.params import param_fields
from ...augment.render_device import resolve_render_device
from ...data.imageio import Decoder, resolve_decoder
from ...data.planning import ShardRows, StreamPlan, plan_pass, shard_rows_for
from ...data.shard_set import ShardSet, resolve_complete_shards
from ...data.streams import PlannedStream, WorkerError, make_loader, read_ahead
from ...models.factory import is_convolutional
from ...models.teachers import LoadedTeacher, TeacherSpec, load_teachers
from ...runtime.console import info, make_progress, warn
from ...runtime.device import cpu_threads, resolve_device
from ...runtime.distributed import DistContext, barrier, init_distributed, shutdown
from ...runtime.errors import USER_ERRORS, UserError
from ...runtime.precision import PrecisionPolicy, check_compile, prepare_model
from .config import DumpConfig, resolve_augment
from .data import DumpBlock, ShardViews
from .teachers import ShardAccumulator, TeacherRunner
from .writer import ShardWriter

__all__ = ["DumpConfig", "TeacherSpec", "print_summary", "run_dump"]


def _store_spec(
    cfg: DumpConfig,
    shards: ShardSet,
    teachers: list[LoadedTeacher],
    aug: AugmentConfig,
    policy: PrecisionPolicy,
    decoder: Decoder,
    render_device: torch.device,
) -> StoreSpec:
    fields = {
        name: FieldSpec(shape=shape, dtype=np.dtype(dtype).name)
        for name, (shape, dtype) in param_fields(aug).items()
    }
    return StoreSpec(
        shards=[(s.name, s.num_samples) for s in shards.index.shards],
        num_views=cfg.views,
        topk=cfg.topk,
        num_classes=shards.num_classes,
        teachers=[t.info for t in teachers],
        aug_fields=fields,
        attrs={
            "dataset_fingerprint": shards.fingerprint(),
            # What a person calls the data (inspect-store names it): make-shards' source and
            # split, e.g. "digits" / "train"; the fingerprint is what a replay checks.
            "dataset_source": shards.index.source,
            "dataset_split": shards.index.split,
            "class_names": list(shards.class_names),
            "channels": shards.channels,
            "image_size": aug.image_size,
            "seed": cfg.seed,
            "augment": aug.to_dict(),
            "on_error": cfg.on_error,
            # Resolved (never "auto"): a resume on another device must not mix precisions.
            "precision": policy.precision,
            # Resolved: replay decodes with it (nvjpeg's pixels differ from the CPU decoders').
            "decoder": decoder,
            # Its type: replay renders there too (GPU resampling differs in the last bits).
            "render_device": render_device.type,
        },
        chunk_rows=cfg.chunk_rows,
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """Rank 0's decision, shared with every rank: what to do, or the error to stop with."""

    missing: list[str]
    finalized: bool
    error: str | None = None


def _plan_store(cfg: DumpConfig, spec: StoreSpec) -> _Plan:
    """Rank 0: create the store, or check that an existing one can be resumed."""
    out = StoreLocation(cfg.out)
    exists = out.exists() and not out.is_empty()
    # A creation at a URL that a kill or a lost connection cut short: ours, made again.
    recreate = exists and not cfg.overwrite and LogitStore.creation_interrupted(cfg.out)
    if recreate:
        warn(f"{out} was left half-created by a run that stopped; creating it again")
    if exists and not (cfg.overwrite or recreate):
        try:
            store = LogitStore.open(cfg.out, mode="r")
        except (StoreVersionError, StoreDamagedError):
            raise  # says itself whether to upgrade civt-pipe or re-dump
        except USER_ERRORS:
            raise UserError(
                f"{out} exists and is not a logit store; choose another --out "
                "(or --overwrite to replace an old store)"
            ) from None
        store.check_compatible(spec)
        return _Plan(missing=store.missing_shards(), finalized=store.is_finalized)
    if exists and (out.is_file() or not out.is_zarr_group()):
        raise UserError(f"refusing to overwrite {out}: it is not a zarr store")
    if out.local is None:
        # Object storage renames nothing atomically: the store is made in place, with a marker
        # first and its attributes last (LogitStore.create), so the rerun after a kill while
        # creating recognizes the half-made store above and makes it again.
        store = LogitStore.create(cfg.out, spec, overwrite=exists)
        return _Plan(missing=[s.name for s in store.shards], finalized=False)
    # Build the empty store beside the target and rename it into place, so a kill while the
    # arrays are being created never leaves a half-made store at --out for the rerun to trip on.
    local = out.local
    staging = local.with_name(f".{local.name}.creating")
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed while creating; the name is ours
    store = LogitStore.create(staging, spec)
    if local.exists():
        shutil.rmtree(local)  # an empty directory, or a store --overwrite replaces
    os.replace(staging, local)
    return _Plan(missing=[s.name for s in store.shards], finalized=False)


def _shared_plan(ctx: DistContext, cfg: DumpConfig, spec: StoreSpec, lock: WriterLock) -> _Plan:
    """Rank 0 takes the writer lock and plans; every rank gets the same plan (or raises the same
    error)."""
    plan: _Plan | None = None
    if ctx.is_main:
        try:
            stale = lock.acquire()
            if stale is not None:
                warn(
                    f"took over the lock of {cfg.out} from a writer that is gone (pid {stale.pid}"
                    f", host {stale.host}); resuming where it stopped"
                )
            plan = _plan_store(cfg, spec)
        except USER_ERRORS as err:
            plan = _Plan(missing=[], finalized=False, error=str(err))
    if ctx.is_distributed:
        box: list[Any] = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    assert plan is not None  # rank 0 always sets it and broadcasts
    if plan.error is not None:
        raise UserError(plan.error)
    return plan


@dataclass
class _RunStats:
    images: int = 0
    views: int = 0
    shards: int = 0
    seconds: float = 0.0


def _dump_shards(
    cfg: DumpConfig,
    ctx: DistContext,
    store: LogitStore,
    shards: ShardSet,
    missing: list[ShardRows],
    plan: StreamPlan,
    teachers: list[LoadedTeacher],
    aug: AugmentConfig,
    device: torch.device,
    policy: PrecisionPolicy,
    decoder: Decoder,
    render_device: torch.device,
) -> _RunStats:
    """Render, run the teachers and write every shard of ``plan`` (this rank's share)."""
    stats = _RunStats()
    if not plan.segments:
        return stats
    render = ShardViews(
        channels=shards.channels,
        seed=cfg.seed,
        num_views=cfg.views,
        aug=aug,
        on_error=cfg.on_error,
        index=shards.index,
        decoder=decoder,
        render_device=str(render_device),
    )
    dataset = PlannedStream(missing, plan, render)
    assert cfg.workers is not None  # made concrete by run_dump
    loader = make_loader(dataset, workers=cfg.workers, pin_memory=device.type == "cuda")
    runner = TeacherRunner(
        teachers=teachers, topk=cfg.topk, batch_size=cfg.batch_size, device=device, policy=policy
    )
    counts = {missing[s.shard].name: missing[s.shard].count for s in plan.segments}
    names = [t.info.name for t in teachers]
    ended: set[str] = set()
    total_images = sum(counts.values())
    start = time.perf_counter()
    # Without worker processes the next blocks render on a thread while the teachers run.
    items = loader if cfg.workers else read_ahead(loader)
    with (
        make_progress(disable=not (cfg.progress and ctx.is_main)) as progress,
        ShardWriter(store) as writer,
    ):
        shard_task = progress.add_task("shards", total=len(counts), unit="shard")
        image_task = progress.add_task("images", total=total_images, unit="img")
        for item in items:
            if isinstance(item, WorkerError):
                raise UserError(item.message)
            if item.shard not in runner.shards:
                runner.shards[item.shard] = ShardAccumulator(
                    counts[item.shard], cfg.views, cfg.topk, shards.num_classes, names, aug
                )
            if isinstance(item, DumpBlock):
                runner.add(item.shard, item.block)
                progress.advance(image_task, len(item.block))
            else:  # SegmentDone: every block of the shard has arrived
                ended.add(item.shard)
            # Write every shard whose rows have all arrived and whose views all have logits
            # (on the writer's thread, while the teachers go on with the next shard).
            for name in sorted(ended):
                acc = runner.shards[name]
                runner.flush(name)
                writer.submit(name, acc)
                del runner.shards[name]
                ended.discard(name)
                stats.shards += 1
                stats.images += acc.count
                progress.advance(shard_task)
        writer.wait()  # the run's time includes writing its last shard
    stats.views = runner.views_done
    stats.seconds = time.perf_counter() - start
    return stats


def _all_reduce_stats(ctx: DistContext, stats: _RunStats) -> _RunStats:
    if not ctx.is_distributed:
        return stats
    t = torch.tensor([stats.images, stats.views, stats.shards], dtype=torch.float64)
    dist.all_reduce(t)
    seconds = torch.tensor([stats.seconds], dtype=torch.float64)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return _RunStats(int(t[0]), int(t[1]), int(t[2]), float(seconds[0]))


def run_dump(cfg: DumpConfig) -> dict[str, Any]:
    """Run ``dump-logits`` (under torchrun: this rank's part). Returns the summary (rank 0).

    Every check a user can fail happens before the store is touched. The summary holds the
    store path, shards/images/views written by this run, time, images/s, each teacher's top-1
    on the views, the number of skipped samples and the store's size on disk.
    """
    device = resolve_device(cfg.device)
    policy = PrecisionPolicy.resolve(cfg.precision, device)
    if cfg.compile:
        check_compile(device)
    cfg = dataclasses.replace(cfg, workers=cfg.loader_workers(device.type))
    assert cfg.workers is not None
    decoder = resolve_decoder(cfg.decoder, device_type=device.type, workers=cfg.workers)
    render_device = resolve_render_device(cfg.render_device, device, workers=cfg.workers)
    with cpu_threads(cfg.threads, cfg.workers, device):
        return _run_dump(cfg, device, policy, decoder, render_device)


def _run_dump(
    cfg: DumpConfig,
    device: torch.device,
    policy: PrecisionPolicy,
    decoder: Decoder,
    render_device: torch.device,
) -> dict[str, Any]:
    # Every tar whole and as indexed, keys unique, before anything is written or replaced.
    shards = resolve_complete_shards(cfg.data)
    teachers = load_teachers(
        cfg.teachers,
        device,
        num_classes=shards.num_classes,
        channels=shards.channels,
        image_size=cfg.image_size,
    )
    image_size = teachers[0].image_size
    aug = resolve_augment(cfg, image_size)
    if cfg.topk > shards.num_classes:
        raise UserError(
            f"--topk {cfg.topk} is larger than the dataset's {shards.num_classes} classes"
        )
    spec = _store_spec(cfg, shards, teachers, aug, policy, decoder, render_device)
    teachers = [
        dataclasses.replace(
            t,
            model=prepare_model(
                t.model,
                device,
                convolutional=is_convolutional(t.info.arch),
                compile=cfg.compile,
            ),
        )
        for t in teachers
    ]

    ctx = init_distributed(device)
    lock = WriterLock(cfg.out)
    try:
        plan = _shared_plan(ctx, cfg, spec, lock)
        if plan.finalized:
            if ctx.is_main:
                info(f"store {cfg.out} is already complete; nothing to do")
            return _summary(
                cfg, LogitStore.open(cfg.out), _RunStats(), already_complete=True, rank=ctx.rank
            )
        barrier(ctx)  # rank 0 has created the store before anyone opens it
        store = LogitStore.open(cfg.out, mode="r+")
        if ctx.is_main:
            done = len(store.shards) - len(plan.missing)
            resumed = f", resuming after {done} written" if done else ""
            info(
                f"dump-logits: {len(plan.missing)} of {len(store.shards)} shards to write"
                f"{resumed}, {cfg.views} views, teachers {', '.join(t.info.name for t in teachers)}"
                f", {ctx.world_size} rank(s), device {device}, {policy.precision}, views "
                f"rendered on {render_device.type}"
            )
        missing = shard_rows_for(
            [shards.path(n) for n in plan.missing], [store.shard(n).count for n in plan.missing]
        )
        mine = plan_pass(missing, rank=ctx.rank, world_size=ctx.world_size, batch_size=1)
        stats = _dump_shards(
            cfg,
            ctx,
            store,
            shards,
            missing,
            mine,
            teachers,
            aug,
            device,
            policy,
            decoder,
            render_device,
        )
        stats = _all_reduce_stats(ctx, stats)
        barrier(ctx)  # every rank's shards are written before rank 0 finalizes
        if ctx.is_main:
            # No extra attributes: the store's free attributes must stay equal to the spec's
            # so the same command recognizes the store (check_compatible) after the run.
            store.finalize()
        barrier(ctx)
        return _summary(cfg, LogitStore.open(cfg.out), stats, already_complete=False, rank=ctx.rank)
    except BaseException:
        # The error that stopped the run is the one to report: a lost connection that also
        # fails the release leaves the lock for the rerun to take over (the writer is gone).
        with suppress(*USER_ERRORS):
            lock.release()
        raise
    finally:
        lock.release()  # rank 0's; nothing left to do once released above
        shutdown(ctx)


def _summary(
    cfg: DumpConfig, store: LogitStore, stats: _RunStats, *, already_complete: bool, rank: int
) -> dict[str, Any]:
    attrs = store.attrs
    return {
        "rank": rank,
        "store": str(cfg.out),
        "already_complete": already_complete,
        "complete": bool(attrs.get("complete", False)),
        "shards": len(store.shards),
        "samples": store.num_samples,
        "views": store.num_views,
        "topk": store.topk,
        "shards_written": stats.shards,
        "images_written": stats.images,
        "views_written": stats.views,
        "seconds": round(stats.seconds, 3),
        "images_per_s": round(stats.images / stats.seconds, 1) if stats.seconds else 0.0,
        "teachers": {
            t["name"]: {"arch": t["arch"], "top1": t.get("top1")} for t in attrs["teachers"]
        },
        "num_skipped": int(attrs.get("num_skipped", 0)),
        # Stores dumped before --precision existed ran their teachers in fp32.
        "precision": str(store.user_attrs.get("precision", "fp32")),
        "store_bytes": store.bytes_on_disk(),
    }


def print_summary(summary: dict[str, Any]) -> None:
    """The human summary on stderr."""
    if summary["already_complete"]:
        return
    gib = summary["store_bytes"] / 2**20
    accs = ", ".join(
        f"{name} {t['top1']:.3f}" if t["top1"] is not None else f"{name} -"
        for name, t in summary["teachers"].items()
    )
    skipped = f", {summary['num_skipped']} skipped" if summary["num_skipped"] else ""
    info(
        f"wrote {summary['shards_written']} shards, {summary['images_written']} images "
        f"x {summary['views']} views in {summary['seconds']:.1f} s "
        f"({summary['images_per_s']:.1f} images/s){skipped}; "
        f"teacher top-1 on the views: {accs}; store {summary['store']} {gib:.1f} MiB"
    )

"""``make-shards``: write a source's split as WebDataset tars plus ``index.json``.

Each tar holds ``{key}.{jpg|png}`` and ``{key}.cls`` (the decimal label) per sample, with fixed
member metadata so the same input gives byte-identical tars. Folder sources keep their files'
JPEG/PNG bytes; what is copied and what is encoded is :mod:`.shard_writer`'s business.

The split is cut into shards of ``shard_size`` consecutive samples, one :class:`ShardJob` each,
run in this process or in ``workers`` processes: a job's tar depends on the job alone, so the
tars and the index are the same for any number of workers. Writes are crash-safe:

1. a marker file (:data:`INCOMPLETE_MARKER`) says the directory is being written;
2. every tar is written as ``<name>.partial`` and renamed when complete
   (:func:`..runtime.atomic.atomic_writer`: disk full or a read-only directory is one line),
   then its receipt (``<name>.receipt.json``);
3. ``index.json`` is written (atomically) after the last tar, then the marker and the
   receipts are removed.

A killed or failed run leaves no index (and the marker), which readers refuse as incomplete;
running make-shards again into that directory resumes it: tars whose receipts match the new
run's plan are kept, the others are written.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.atomic import atomic_write_bytes, check_output_dir
from ..runtime.console import info, make_progress, warn
from ..runtime.errors import UserError
from ..runtime.options import MAX_WORKERS, check_choices, check_numbers, option
from .imageio import ON_ERROR_MODES, OnError
from .index import INCOMPLETE_MARKER, INDEX_FILENAME, ShardIndex, ShardInfo
from .shard_writer import FORMATS, RECEIPT_SUFFIX, ShardJob, ShardResult, run_job
from .sources import SPLITS, SourceData, open_source


@dataclass(frozen=True, slots=True)
class MakeShardsConfig:
    """What ``make-shards`` writes, and where."""

    source: str = option(
        help="digits (built in, no download), idx:DIR (MNIST-family idx files), "
        "cifar:DIR (CIFAR-10/100 python batches) or folder:DIR (one subfolder per class)."
    )
    out_dir: Path = option(help="Directory for the tars and index.json (one per split).")
    split: str = option("train", help="Which split of the source to write.", choices=SPLITS)
    shard_size: int = option(1000, help="Samples per tar (the last tar holds the rest).", minimum=1)
    format: str | None = option(
        None,
        help="Encoding of every image [default: png; folder:DIR keeps JPEG and PNG files' "
        "bytes and stores other formats as png].",
        choices=FORMATS,
    )
    resize_short: int | None = option(
        None,
        help="Cap the shorter side at S px: larger images are resized (bicubic) and "
        "re-encoded, the others stored as they are.",
        minimum=1,
    )
    workers: int = option(
        1,
        help="Processes writing shards in parallel (the output does not depend on it).",
        minimum=1,
        maximum=MAX_WORKERS,
        resume="may-change",
    )
    on_error: OnError = option(
        "fail",
        help="An image that does not decode stops the run (named) or is left out and "
        "listed in index.json.",
        choices=ON_ERROR_MODES,
    )
    overwrite: bool = option(False, help="Replace the shards in a non-empty OUT_DIR.")
    jpeg_quality: int = option(
        95, help="JPEG quality of encoded JPEGs.", flag="", minimum=1, maximum=100
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)


def shard_name(split: str, number: int) -> str:
    """``{split}-{number:06d}.tar``."""
    return f"{split}-{number:06d}.tar"


def _is_ours(path: Path) -> bool:
    """Files a previous make-shards may have left: tars, receipts, partial files, the index,
    the marker."""
    name = path.name.removesuffix(".partial")
    return (
        name.endswith((".tar", ".tar" + RECEIPT_SUFFIX))
        or name in (INDEX_FILENAME, INCOMPLETE_MARKER)
    ) and path.is_file()


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> bool:
    """Make ``out_dir`` ready; True when it holds an interrupted run to resume."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory")
    if (out_dir / INCOMPLETE_MARKER).is_file():
        # Left by a killed or failed make-shards: its finished tars are checked against their
        # receipts job by job, so keeping them cannot change the result (--overwrite or not).
        for path in out_dir.iterdir():
            if path.name.endswith(".partial") and _is_ours(path):
                path.unlink()
        return True
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"output directory {out_dir} is not empty; pass --overwrite to replace")
        # Only remove what make-shards writes; anything else in the directory is the user's.
        for path in sorted(out_dir.iterdir()):
            if _is_ours(path):
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return False


def _check_keys(data: SourceData) -> None:
    seen: set[str] = set()
    for key in data.keys:
        if not key or "." in key or "/" in key:
            raise UserError(f"source {data.spec} produced an invalid key {key!r}")
        if key in seen:
            raise UserError(f"source {data.spec} produced the key {key!r} twice")
        seen.add(key)


def plan_jobs(cfg: MakeShardsConfig, data: SourceData) -> list[ShardJob]:
    """One job per shard of ``shard_size`` consecutive samples, in order."""
    root = Path(data.extra["root"]) if "root" in data.extra else None
    files = data.files
    jobs = []
    for number, start in enumerate(range(0, len(data), cfg.shard_size)):
        rows = range(start, min(start + cfg.shard_size, len(data)))
        jobs.append(
            ShardJob(
                path=Path(cfg.out_dir) / shard_name(cfg.split, number),
                keys=tuple(data.keys[i] for i in rows),
                labels=tuple(int(data.labels[i]) for i in rows),
                channels=data.channels,
                files=None if files is None else tuple(files[i] for i in rows),
                images=None if files is not None else tuple(data.load_image(i) for i in rows),
                format=cfg.format,
                default_format=data.default_format,
                jpeg_quality=cfg.jpeg_quality,
                resize_short=cfg.resize_short,
                on_error=cfg.on_error,
                root=root,
            )
        )
    return jobs


def run_jobs(
    jobs: Sequence[ShardJob],
    workers: int,
    on_done: Callable[[ShardJob, bool], None] = lambda job, kept: None,
) -> list[ShardResult]:
    """Every job's result, in job order; ``on_done(job, kept)`` as each finishes.

    With ``workers > 1`` the jobs run in that many worker processes forked from a fresh server
    process (a script calling this is not re-imported by them); the first error cancels the
    jobs not yet started and is raised here once the running ones have finished (their tars
    and receipts stay for a resumed run).
    """
    if workers == 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            result, kept = run_job(job)
            on_done(job, kept)
            results.append(result)
        return results
    done: dict[int, ShardResult] = {}
    # Not forked from the caller, which may hold threads (torch, a progress bar) a fork would
    # copy: workers fork from a fresh single-threaded server instead. The server imports the
    # job code and torchvision.io once (~6 CPU-seconds on a busy 2-core machine); spawned
    # workers paid that each, which made 2 workers slower than 1 below ~1,000 images.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([run_job.__module__, "torchvision.io"])
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(run_job, job): n for n, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                n = futures[future]
                done[n], kept = future.result()
                on_done(jobs[n], kept)
        except BrokenProcessPool:
            # A worker was killed (out of memory?).
            raise UserError(
                "a make-shards worker process died (killed, or out of memory?); run the same "
                "command again to resume, with fewer --workers"
            ) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [done[n] for n in range(len(jobs))]


def _mean_std(
    results: Sequence[ShardResult], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of every pixel in [0, 1], from the shards' exact sums (the
    shards hold at least one image)."""
    count = sum(r.pixel_count for r in results)
    means, stds = [], []
    for c in range(channels):
        total = sum(r.pixel_sum[c] for r in results)
        total_sq = sum(r.pixel_sq_sum[c] for r in results)
        mean = total / (255 * count)
        var = max(total_sq / (255 * 255 * count) - mean * mean, 0.0)
        means.append(round(mean, 6))
        stds.append(round(math.sqrt(var), 6))
    return tuple(means), tuple(stds)


def build_index(
    cfg: MakeShardsConfig, data: SourceData, results: Sequence[ShardResult]
) -> ShardIndex:
    """The index of the written shards; a shard left empty by skipped images is not listed."""
    written = [r for r in results if r.num_samples]
    if not written:
        raise UserError(f"no image of {data.spec} ({cfg.split}) could be read; nothing written")
    mean, std = _mean_std(written, data.channels)
    sizes = {size for r in written for size in r.sizes}
    formats = sorted({ext for r in written for ext in r.formats})
    extra: dict[str, Any] = dict(data.extra)
    if cfg.resize_short is not None:
        extra["resize_short"] = cfg.resize_short
    if data.files is not None:
        extra["images"] = {
            "copied": sum(r.copied for r in results),
            "encoded": sum(r.encoded for r in results),
            "resized": sum(r.resized for r in results),
            "skipped": sum(len(r.skipped) for r in results),
        }
    if data.ignored:
        extra["ignored_files"] = len(data.ignored)
    skipped = [s for r in results for s in r.skipped]
    if skipped:
        extra["skipped"] = [s.to_dict() for s in skipped]
    return ShardIndex(
        shards=tuple(
            ShardInfo(r.name, r.num_samples, r.key_digest, tar_bytes=r.tar_bytes) for r in written
        ),
        class_names=data.class_names,
        source=data.spec,
        split=cfg.split,
        channels=data.channels,
        image_size=next(iter(sizes)) if len(sizes) == 1 else None,
        mean=mean,
        std=std,
        # Folder shards may mix encodings (an ImageNet folder holds a PNG named .JPEG).
        format="+".join(formats),
        extra=extra,
    )


def make_shards(cfg: MakeShardsConfig) -> ShardIndex:
    """Write ``cfg.source``'s ``cfg.split`` into ``cfg.out_dir``; returns the index written.

    Raises :class:`UserError` for a bad source, a non-empty output without ``overwrite``, or an
    image that does not decode (named; ``on_error="skip"`` leaves it out and lists it in the
    index instead). A run that stops early leaves its finished tars for the next run to keep.
    """
    # Open (and validate) the source before touching the output directory.
    data = open_source(cfg.source, cfg.split, check_headers=cfg.on_error == "fail")
    _check_keys(data)
    out_dir = Path(cfg.out_dir)
    check_output_dir(out_dir)
    resuming = _prepare_out_dir(out_dir, cfg.overwrite)
    marker = out_dir / INCOMPLETE_MARKER
    if not resuming:
        atomic_write_bytes(marker, b"make-shards is writing this directory\n")
    ignored = list(data.ignored)
    if ignored:
        more = f" and {len(ignored) - 1} more" if len(ignored) > 1 else ""
        info(f"left out files that are not images (by extension): {ignored[0]}{more}")
    jobs = plan_jobs(cfg, data)
    kept = 0
    with make_progress() as progress:
        task = progress.add_task(f"make-shards {cfg.split}", total=len(data), unit="img")

        def on_done(job: ShardJob, reused: bool) -> None:
            nonlocal kept
            kept += reused
            progress.advance(task, len(job.keys))
            if kept:
                progress.update(task, info=f"{kept} finished shards kept")

        results = run_jobs(jobs, cfg.workers, on_done)
    index = build_index(cfg, data, results)
    listed = {s.name for s in index.shards}
    for path in out_dir.iterdir():
        # Tars of an earlier, different plan, and shards every image of which was skipped.
        if path.name.endswith(".tar") and path.name not in listed and _is_ours(path):
            path.unlink()
    index.save(out_dir)
    marker.unlink(missing_ok=True)
    for path in out_dir.iterdir():
        if path.name.endswith(RECEIPT_SUFFIX) and _is_ours(path):
            path.unlink()
    if kept:
        info(f"kept {kept} of {len(jobs)} shards finished by an interrupted run")
    skipped = index.extra.get("skipped", [])
    if skipped:
        warn(
            f"left out {len(skipped)} image(s) that do not decode, e.g. {skipped[0]['file']}: "
            f"{skipped[0]['error']} (all listed in {out_dir / INDEX_FILENAME})"
        )
    return index

"""Benchmark of the two-stage pipeline: ``python bench/run.py [--quick] [--json]``.

Measures, as ratios taken within one run (absolute times on a shared machine drift), what the
design promises (issue 7, recorded in docs/benchmarks.md):

1. ``stage2_vs_student_only`` — train-student steps/s from the store ÷ the same student with
   cross-entropy only (``--token-mode none``) on the same replayed stream. Goal ≥ 0.95.
2. ``stage2_vs_online`` — steps/s from the store ÷ online distillation with the same teachers,
   next to ``stage2_vs_online_ideal`` = (student step + teachers' forward) / student step.
   Goal: achieved ≥ 0.9 × ideal.
3. ``stage1_vs_teacher_forward`` — dump-logits views/s ÷ the teachers' bare forward passes on
   in-memory tensors at the same batch size. Goal ≥ 0.85.
4. ``store_bytes_per_view_teacher`` — at k ∈ {1, 5, 10} on digits (C = 10: k = 10 is full)
   and on a synthetic 1000-class store, plus augmentation bytes per view, against Apple's
   reinforced ImageNet (~65 B, k = 10) and FKD (~29 B, k = 5). Goal ≤ half at equal k.
5. ``topk_fidelity`` — mean KL(full ‖ top-k reconstruction), and the student's top-1 trained
   from k = 5 vs full logits (same seed).
6. ``peak_rss_mb`` — stage one and stage two in fresh processes at 1× and 4× the data.
7. ``defaults_vs_best`` — train-student's steps/s with its default CPU settings ÷ the best
   ``--threads``/``--workers`` pair, as found and beside a CPU-bound process
   (``bench/thread_defaults.py``, fresh CLI processes). Goal ≥ 1/1.2 in both.
8. ``scale`` (``--full`` only) — ``bench/scale.py``: per-image costs on a synthetic
   ImageNet-like folder at 1×, 4× and 16× a base size (its ``--quick`` settings with ``--quick``).

Progress goes to stderr; ``--json`` prints one JSON object on stdout.
"""

# ruff: noqa: E402  (OpenMP's wait policy is set before torch loads, as the CLI does)
from __future__ import annotations

from civt_pipe.pipeline.runtime.openmp import set_openmp_defaults

set_openmp_defaults()  # the bench measures what civt-pipe runs with

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compute import (
    bare_forward_views_per_s,
    interleaved_median_seconds,
    online_ideal_ratio,
    student_step_fn,
    teachers_forward_fn,
)
from fidelity import distribution_stats, fidelity_table, synthetic_logits
from peak_rss import measure
from scale import QUICK as SCALE_QUICK
from scale import ScaleSettings
from scale import run as run_scale
from stages import (
    STUDENT,
    dump_config_kwargs,
    load_teacher_models,
    make_digits,
    median_steps_per_s,
    replicate_shards,
    run_dump_from_kwargs,
    run_student_from_kwargs,
    step_records,
    student_config_kwargs,
    teacher_view_logits,
    train_teachers,
)
from store_bytes import (
    compare_with_published,
    store_bytes_report,
    truncate_store,
    write_synthetic_store,
)
from thread_defaults import run as run_thread_defaults

from civt_pipe.pipeline.runtime.console import info

KS = (1, 5, 10)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """Sizes of one benchmark run (``--quick`` or full)."""

    teacher_epochs: int
    student_epochs: int
    """Epochs of each stage-two run (timing and top-1)."""
    views: int
    batch_size: int
    """Student batch (stage two and the student-step yardstick)."""
    dump_batch_size: int
    workers: int
    """DataLoader workers in every stage."""
    threads: int
    """torch intra-op threads of the compute in every stage (cores minus workers: on a busy
    2-core machine extra threads spin instead of working)."""
    timing_rounds: int
    """How often the three stage-two timing runs are repeated, interleaved."""
    timing_epochs: int
    """Epochs of each stage-two timing run."""
    repeats: int
    """Timed calls per compute yardstick."""
    synthetic_samples: int
    synthetic_views: int
    fidelity_samples: int
    rss_times: int
    """Size of the large dataset for the memory runs, in copies of digits train."""
    student_lr: float = 1e-3
    """Peak learning rate of every stage-two run (the default, 1e-3 × batch / 512, is made
    for 300 epochs; a few epochs need the full 1e-3 to leave chance level)."""
    seed: int = 7

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name not in ("workers", "student_lr") and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


QUICK = BenchSettings(
    teacher_epochs=2,
    student_epochs=4,
    views=2,
    batch_size=64,
    dump_batch_size=256,
    workers=1,
    threads=1,
    timing_rounds=2,
    timing_epochs=2,
    repeats=20,
    synthetic_samples=2000,
    synthetic_views=2,
    fidelity_samples=512,
    rss_times=2,
)
FULL = BenchSettings(
    teacher_epochs=10,
    student_epochs=15,
    views=4,
    batch_size=64,
    dump_batch_size=256,
    workers=1,
    threads=1,
    timing_rounds=3,
    timing_epochs=3,
    repeats=40,
    synthetic_samples=8000,
    synthetic_views=4,
    fidelity_samples=1438,
    rss_times=4,
)


class Clock:
    """Section timer whose lines go to stderr."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.sections: dict[str, float] = {}

    def section(self, name: str) -> _Section:
        return _Section(self, name)


class _Section:
    def __init__(self, clock: Clock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        info(f"bench {time.perf_counter() - self.clock.start:6.0f} s: {self.name} ...")

    def __exit__(self, *exc: object) -> None:
        took = time.perf_counter() - self.t0
        self.clock.sections[self.name] = round(took, 1)
        info(f"bench: {self.name} took {took:.1f} s")


def machine() -> dict[str, Any]:
    """Where and when the figures were taken."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": load,
    }


# ------------------------------------------------------------------------------------------
# 4 + 5 on synthetic 1000-class logits


def synthetic_section(work: Path, s: BenchSettings) -> dict[str, Any]:
    """Bytes per (view, teacher) and top-k fidelity of a 1000-class store with peaked logits."""
    n, views, classes = s.synthetic_samples, s.synthetic_views, 1000
    logits = {
        name: synthetic_logits(n * views, classes, seed=s.seed + i)[0].view(n, views, classes)
        for i, name in enumerate(("cnn", "inn"))
    }
    flat = logits["cnn"].reshape(-1, classes)
    out: dict[str, Any] = {
        "num_classes": classes,
        "samples": n,
        "views": views,
        "distribution": distribution_stats(flat),
        "fidelity": [row.to_dict() for row in fidelity_table(flat, list(KS))],
        "bytes": {},
    }
    for k in KS:
        path = work / f"synthetic-k{k}.zarr"
        write_synthetic_store(
            path, teacher_logits=logits, k=k, num_views=views, shard_size=1000, seed=s.seed
        )
        report = store_bytes_report(path)
        report["vs_published"] = compare_with_published(report["per_view_teacher"], k)
        out["bytes"][f"k{k}"] = report
        shutil.rmtree(path)
    return out


# ------------------------------------------------------------------------------------------
# Stage two runs


def student_run(
    work: Path, name: str, s: BenchSettings, **kwargs: Any
) -> tuple[dict[str, Any], float]:
    """One train-student run; returns its summary and median steps/s."""
    out = work / "runs" / name
    cfg = student_config_kwargs(
        out=out,
        epochs=kwargs.pop("epochs", s.student_epochs),
        batch_size=s.batch_size,
        workers=s.workers,
        seed=s.seed,
        views=s.views,
        lr=s.student_lr,
        **kwargs,
    )
    summary = run_student_from_kwargs(cfg)
    rate = median_steps_per_s(step_records(out / "metrics.jsonl"), s.batch_size)
    info(f"bench: {name}: {rate:.2f} steps/s, val {summary.get('val')}")
    return summary, rate


def ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else float("nan")


def run(s: BenchSettings, work: Path) -> dict[str, Any]:
    """Every measurement of the benchmark; returns the JSON-able result.

    Raw figures are also kept in ``work/partial.json`` as each section ends, so a run cut
    short on a busy machine still leaves what it measured.
    """
    clock = Clock()
    torch.set_num_threads(s.threads)
    result: dict[str, Any] = {"machine": machine(), "settings": asdict(s)}
    partial: dict[str, Any] = {"machine": result["machine"]}

    def keep(name: str, value: Any) -> None:
        partial[name] = value
        partial["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
        (work / "partial.json").write_text(json.dumps(partial, default=str))

    torch.manual_seed(s.seed)

    with clock.section("synthetic 1000-class store"):
        synthetic = synthetic_section(work, s)

    with clock.section("make-shards digits"):
        train, test = make_digits(work / "digits")
    with clock.section("train-teacher x2"):
        teachers = train_teachers(work, train, epochs=s.teacher_epochs, workers=s.workers)
    num_classes, channels = _data_facts(train)
    loaded = load_teacher_models(teachers, num_classes=num_classes, channels=channels)
    models = [t.model for t in loaded]
    image_size = loaded[0].image_size
    g = torch.Generator().manual_seed(s.seed)
    dump_batch = torch.rand(s.dump_batch_size, channels, image_size, image_size, generator=g)
    bare_dump = teachers_forward_fn(models, dump_batch)

    # ------------------------------------------------------------------ stage one
    # Each dump is paired with the bare forward measured right after it, so both see the
    # same load of the shared machine.
    stores: dict[str, Path] = {}
    stage1: dict[str, dict[str, Any]] = {}
    for k in (10, 5):
        key = f"k{k}"
        with clock.section(f"dump-logits k={k}"):
            stores[key] = work / f"digits-{key}.zarr"
            summary = run_dump_from_kwargs(
                dump_config_kwargs(
                    train,
                    teachers,
                    stores[key],
                    views=s.views,
                    topk=k,
                    seed=s.seed,
                    batch_size=s.dump_batch_size,
                    # dump-logits' own defaults, what a user gets (on the CPU: no worker
                    # process, a read-ahead thread renders, the forward has every core).
                    workers=None,
                    threads=None,
                )
            )
            # One thread and every core; a full dump batch is long enough that a few calls
            # give a steady median.
            bare = bare_forward_views_per_s(
                bare_dump,
                s.dump_batch_size,
                threads=(s.threads, os.cpu_count() or 1),
                repeats=max(3, s.repeats // 4),
            )
            views_per_s = _dump_views_per_s(summary)
            stage1[key] = {
                "dump_views_per_s": views_per_s,
                "bare_forward_views_per_s": bare,
                "ratio": ratio(views_per_s, bare),
                "dump_seconds": summary["seconds"],
                "teachers_top1_on_views": {n: t["top1"] for n, t in summary["teachers"].items()},
            }
    keep("stage1", stage1)
    stores["k1"] = work / "digits-k1.zarr"
    truncate_store(stores["k10"], stores["k1"], 1)

    # ------------------------------------------------------------------ compute yardsticks
    with clock.section("compute yardsticks"):
        step_batch = dump_batch[: s.batch_size]
        step_args = {
            "num_classes": num_classes,
            "in_chans": channels,
            "image_size": image_size,
            "batch_size": s.batch_size,
            "seed": s.seed,
        }
        yard = interleaved_median_seconds(
            {
                "student_step": student_step_fn(
                    STUDENT, teacher_names=[t.name for t in teachers], **step_args
                ),
                "student_step_plain": student_step_fn(STUDENT, teacher_names=[], **step_args),
                "teachers_forward": teachers_forward_fn(models, step_batch),
            },
            repeats=s.repeats,
        )

    # ------------------------------------------------------------------ stage two timing
    rounds: list[dict[str, float]] = []
    with clock.section("stage-two timing runs"):
        for r in range(s.timing_rounds):
            rates = {}
            for name, kwargs in (
                ("store", {"store": stores["k5"]}),
                ("student_only", {"store": stores["k5"], "token_mode": "none"}),
                ("online", {"teachers": teachers}),
            ):
                _, rates[name] = student_run(
                    work, f"{name}-r{r}", s, data=train, epochs=1, **kwargs
                )
            rounds.append(rates)
    keep("stage2_rounds", rounds)
    store_rate = statistics.median(r["store"] for r in rounds)
    plain_rate = statistics.median(r["student_only"] for r in rounds)
    online_rate = statistics.median(r["online"] for r in rounds)
    ideal = online_ideal_ratio(yard["student_step"], yard["teachers_forward"])
    achieved = store_rate / online_rate

    # ------------------------------------------------------------------ accuracy k=5 vs full
    with clock.section("student top-1: k=5 vs full"):
        acc: dict[str, Any] = {}
        for key in ("k5", "k10"):
            summary, rate = student_run(
                work, f"acc-{key}", s, data=train, store=stores[key], val=test
            )
            acc[key] = {"val_top1": summary["val"], "steps_per_s": rate}
    keep("student_top1", acc)

    # ------------------------------------------------------------------ fidelity on digits
    with clock.section("top-k fidelity on digits"):
        view_logits = teacher_view_logits(
            train, stores["k10"], teachers, max_samples=s.fidelity_samples
        )
        digits_fidelity = {
            name: {
                "distribution": distribution_stats(z),
                "max_abs_logit": float(z.abs().max()),
                "fidelity": [row.to_dict() for row in fidelity_table(z, list(KS))],
            }
            for name, z in view_logits.items()
        }
    keep("topk_fidelity_digits", digits_fidelity)

    # ------------------------------------------------------------------ memory
    with clock.section(f"peak memory at 1x and {s.rss_times}x data"):
        big = replicate_shards(train, work / f"digits-x{s.rss_times}", s.rss_times)
        rss: dict[str, Any] = {"stage1": {}, "stage2": {}}
        env = {"OMP_NUM_THREADS": str(s.threads)}
        for label, data in (("1x", train), (f"{s.rss_times}x", big)):
            store = work / f"rss-{label}.zarr"
            dump = measure(
                "dump",
                dump_config_kwargs(
                    data,
                    teachers,
                    store,
                    views=1,
                    topk=5,
                    seed=s.seed,
                    batch_size=s.dump_batch_size,
                    workers=s.workers,
                    threads=s.threads,
                ),
                env=env,
            )
            samples = int(dump["summary"]["samples"])
            rss["stage1"][label] = _rss_entry(dump, samples)
            train_run = measure(
                "train",
                student_config_kwargs(
                    data,
                    work / "runs" / f"rss-{label}",
                    store=store,
                    epochs=1,
                    batch_size=s.batch_size,
                    workers=s.workers,
                    seed=s.seed,
                    views=1,
                    lr=s.student_lr,
                ),
                env=env,
            )
            rss["stage2"][label] = _rss_entry(train_run, samples)
    keep("peak_rss_mb", rss)

    # ------------------------------------------------------------------ thread defaults
    with clock.section("defaults vs best CPU settings"):
        # Two interleaved rounds (median): in one round the default and the identical
        # explicit setting once measured 16 % apart, more than the 1.2x the row decides.
        defaults = run_thread_defaults(
            train,
            stores["k5"],
            work / "defaults",
            epochs=1,
            batch_size=s.batch_size,
            rounds=s.timing_rounds,
        )
    keep("defaults_vs_best", defaults)

    # ------------------------------------------------------------------ assemble
    digits_bytes = {}
    for k in KS:
        report = store_bytes_report(stores[f"k{k}"])
        report["vs_published"] = compare_with_published(report["per_view_teacher"], k)
        digits_bytes[f"k{k}"] = report
    stage1_value = statistics.median(v["ratio"] for v in stage1.values())
    synthetic_bytes = synthetic["bytes"]

    result.update(
        {
            "stage2_vs_student_only": {
                "value": ratio(store_rate, plain_rate),
                "goal": ">= 0.95",
                "met": store_rate / plain_rate >= 0.95,
                "store_steps_per_s": store_rate,
                "student_only_steps_per_s": plain_rate,
                "rounds": rounds,
                "student_step_s": yard["student_step"],
                "student_step_plain_s": yard["student_step_plain"],
                # The CivT's two distillation tokens and heads cost compute of their own; this
                # is the ratio a store that cost nothing would reach against a token-free
                # student, and value / bound is the share lost to the store itself.
                "model_bound": ratio(yard["student_step_plain"], yard["student_step"]),
                "store_overhead_ratio": ratio(
                    store_rate / plain_rate, yard["student_step_plain"] / yard["student_step"]
                ),
            },
            "stage2_vs_online": {
                "value": round(achieved, 4),
                "store_steps_per_s": store_rate,
                "online_steps_per_s": online_rate,
            },
            "stage2_vs_online_ideal": {
                "value": round(ideal, 4),
                "student_step_s": yard["student_step"],
                "teachers_forward_s": yard["teachers_forward"],
                "achieved_over_ideal": ratio(achieved, ideal),
                "goal": "achieved >= 0.9 x ideal",
                "met": achieved >= 0.9 * ideal,
            },
            "stage1_vs_teacher_forward": {
                "value": stage1_value,
                "goal": ">= 0.85",
                "met": stage1_value >= 0.85,
                "runs": stage1,
                "batch_size": s.dump_batch_size,
                "views": s.views,
            },
            "store_bytes_per_view_teacher": {
                "digits": {k: v["per_view_teacher"] for k, v in digits_bytes.items()},
                "synthetic_1000": {k: v["per_view_teacher"] for k, v in synthetic_bytes.items()},
                "raw_synthetic_1000": {
                    k: v["raw_per_view_teacher"] for k, v in synthetic_bytes.items()
                },
                "aug_bytes_per_view": {
                    "digits_small_16px": digits_bytes["k10"]["aug_per_view"],
                    "synthetic_deit_224px": synthetic_bytes["k10"]["aug_per_view"],
                },
                "other_bytes_per_view": {
                    "digits": digits_bytes["k10"]["other_per_view"],
                    "synthetic_1000": synthetic_bytes["k10"]["other_per_view"],
                },
                "vs_published_synthetic_1000": {
                    k: v["vs_published"] for k, v in synthetic_bytes.items() if v["vs_published"]
                },
                "details": {"digits": digits_bytes, "synthetic_1000": synthetic_bytes},
            },
            "topk_fidelity": {
                "digits": digits_fidelity,
                "synthetic_1000": {
                    "distribution": synthetic["distribution"],
                    "fidelity": synthetic["fidelity"],
                },
                "student_top1": {
                    "k5": acc["k5"]["val_top1"],
                    "full": acc["k10"]["val_top1"],
                    "epochs": s.student_epochs,
                    "lr": s.student_lr,
                    "seed": s.seed,
                },
            },
            "peak_rss_mb": rss,
            "defaults_vs_best": defaults,
            "section_seconds": clock.sections,
            "total_seconds": round(time.perf_counter() - clock.start, 1),
        }
    )
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _data_facts(data: Path) -> tuple[int, int]:
    """(class count, channels) of a shard set."""
    from civt_pipe.pipeline.data.shard_set import resolve_shards

    shard_set = resolve_shards(str(data))
    return int(shard_set.num_classes), int(shard_set.channels)


def _dump_views_per_s(summary: dict[str, Any]) -> float:
    seconds = float(summary["seconds"])
    return float(summary["views_written"]) / seconds if seconds else float("nan")


def _rss_entry(measured: dict[str, Any], samples: int) -> dict[str, Any]:
    return {
        "samples": samples,
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "peak_pss_with_workers_mb": round(measured["peak_pss_with_workers_mb"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (~10 min on 2 cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--work", type=Path, help="keep intermediate files here (default: temp)")
    parser.add_argument(
        "--full", action="store_true", help="also run the scale bench (bench/scale.py)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")
    settings = QUICK if args.quick else FULL

    def run_all(work: Path) -> dict[str, Any]:
        result = run(settings, work)
        if args.full:
            scale = SCALE_QUICK if args.quick else ScaleSettings()
            result["scale"] = run_scale(scale, work / "scale")
        return result

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run_all(args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="civt-bench-") as tmp:
            result = run_all(Path(tmp))
    result["command"] = (
        "python bench/run.py"
        + (" --quick" if args.quick else "")
        + (" --full" if args.full else "")
        + (" --json" if args.json else "")
    )
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(json.dumps(result, indent=2, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()

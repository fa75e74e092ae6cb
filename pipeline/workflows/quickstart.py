"""``civt-pipe quickstart``: the whole pipeline on the built-in digits with nano models.

Steps, each one call into its stage's own function (nothing here re-implements a stage):

1. ``make-shards digits`` → ``DIR/data/train`` and ``DIR/data/test``;
2. ``train-teacher`` ``cnn-nano`` and ``inn-nano`` → ``DIR/teachers/{cnn,inn}/`` (run directories);
3. ``dump-logits`` with both teachers → ``DIR/store.zarr`` (V views, top-k);
4. ``train-student civt-nano`` from the store → ``DIR/runs/civt``;
5. the no-distillation control → ``DIR/runs/baseline``: the same ``civt-nano`` with
   ``token_mode="none"`` (no distillation tokens, no KL term — λ0·CE only), trained from the
   *same store* so it sees exactly the same replayed views (same augmentation, mixing, view
   order, epochs, seed, optimizer and schedule). Only the teachers' advice differs;
6. ``evaluate`` every model on the test shards.

Teachers and students validate on the test split every epoch (``--val``), so ``civt-pipe plot``
of a run draws its accuracy per head; validation never touches training (the weights are
bit-identical without it: tests/test_quickstart.py), so the figures do not change.

Re-running into the same ``DIR`` reuses every finished step (shards with their ``index.json``,
a teacher checkpoint whose training reached its last epoch, a complete store, a student run
with ``final.pt``) and resumes an unfinished one, so an interrupted quickstart picks up where it
stopped. ``DIR/quickstart.json`` records the settings; re-running with other settings is a
clear error unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..augment.config import MIN_IMAGE_SIZE, PRESET_CHOICES
from ..models.token_mode import TokenMode
from ..runtime.atomic import atomic_write_json, check_output_dir
from ..runtime.console import console, info, warn
from ..runtime.device import check_device
from ..runtime.errors import USER_ERRORS, UserError
from ..runtime.options import MAX_THREADS, check_choices, check_numbers, option

MANIFEST = "quickstart.json"
RESULTS = "results.json"
TEACHERS: tuple[tuple[str, str], ...] = (("cnn", "cnn-nano"), ("inn", "inn-nano"))
"""(name, arch) of the two teachers: convolution vs involution, same depth and width."""
STUDENT = "civt-nano"
# What quickstart writes inside DIR; --overwrite removes only these, never the rest of DIR.
_OWNED = ("data", "teachers", "store.zarr", "runs", MANIFEST, RESULTS)


@dataclass(kw_only=True)
class QuickstartConfig:
    """Settings of ``civt-pipe quickstart``. The defaults are the measured recipe (README): tuned
    for the small digits on a CPU (train-student's ``small`` recipe with lr 2e-3), not the
    published ImageNet recipe (``train-student --recipe coadvise``)."""

    out: Path = option(
        Path("quickstart"), help="Working directory (re-run into it to resume).", flag="--out"
    )
    epochs: int = option(30, help="Student epochs, for CivT and the baseline alike.", minimum=1)
    teacher_epochs: int = option(10, help="Epochs of each teacher.", minimum=1)
    views: int = option(10, help="Stored augmented views per image.", minimum=1)
    # At most 10: digits has 10 classes.
    topk: int = option(5, help="Teacher logits kept per view.", minimum=1, maximum=10)
    lr: float = option(2e-3, help="Student peak learning rate (AdamW, warm-up then cosine).")
    batch_size: int = option(64, help="Student batch.", flag="", minimum=1)
    # Measured: at the native 8 px the involution teacher reached only 73 % test top-1 in 8
    # epochs (94 % at 16 px in 10).
    image_size: int = option(
        16,
        help="Side of every model's input (the 8×8 digits upscaled).",
        flag="",
        minimum=MIN_IMAGE_SIZE,
    )
    patch_size: int = option(
        4, help="Student patch size: 16 px / 4 = a 4×4 grid of 16 patches.", flag="", minimum=1
    )
    aug: str = option(
        "small",
        help="Augmentation preset of the stored views (small suits 16 px digits).",
        flag="",
        choices=PRESET_CHOICES,
    )
    seed: int = option(0, help="Seed of teachers, views and students.", minimum=0)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    # The nano models are too small to gain from more, and on a CPU shared with other work
    # extra threads spin-wait: measured 20× slower with 2 threads on a busy 2-core machine.
    # Data loading runs in worker processes on the other core.
    threads: int = option(1, help="Torch CPU threads.", flag="", minimum=1, maximum=MAX_THREADS)
    overwrite: bool = option(
        False, help="Start afresh: remove an earlier quickstart's files in --out."
    )
    progress: bool = option(True, help="Draw each stage's progress bars.", flag="")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_numbers(self)
        check_choices(self)
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not self.seed < 2**63:
            raise UserError(f"--seed must lie in [0, 2**63), got {self.seed}")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line first)."""
        check_device(self.device)

    def settings(self) -> dict[str, Any]:
        """What decides the results (the manifest): everything but where and how it runs."""
        out = asdict(self)
        for key in ("out", "device", "threads", "overwrite", "progress"):
            out.pop(key)
        return out


@dataclass
class Paths:
    """Where each artifact of a quickstart in ``root`` lives."""

    root: Path

    @property
    def train(self) -> Path:
        return self.root / "data" / "train"

    @property
    def test(self) -> Path:
        return self.root / "data" / "test"

    def teacher(self, name: str) -> Path:
        return self.root / "teachers" / name

    @property
    def store(self) -> Path:
        return self.root / "store.zarr"

    @property
    def civt(self) -> Path:
        return self.root / "runs" / "civt"

    @property
    def baseline(self) -> Path:
        return self.root / "runs" / "baseline"


@dataclass
class Step:
    """One entry of the overall step list."""

    title: str
    done: Callable[[], bool]
    """True when the step's artifact is complete and can be reused."""
    run: Callable[[], None]
    status: str = "pending"
    seconds: float = 0.0


@dataclass
class _Results:
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    store_written: bool = False
    """The dump step ran in this session: earlier student runs learned from another store."""


# -------------------------------------------------------------------------- reuse detection


def shards_done(path: Path) -> bool:
    """A shard directory is finished once make-shards has written its ``index.json``."""
    from ..data.index import INDEX_FILENAME

    return (path / INDEX_FILENAME).is_file()


def teacher_epochs_done(path: Path) -> int:
    """Epochs a teacher run directory has finished (0 when it holds no ``last.pt``)."""
    from ..runtime.run_layout import LAST

    if not (path / LAST).is_file():
        return 0
    from ..models.checkpoint import load_checkpoint

    state = load_checkpoint(path / LAST).get("train_state") or {}
    return int(state.get("epoch", 0))


def store_done(path: Path) -> bool:
    """A store is reusable once every shard is written and it is finalized."""
    if not path.exists():
        return False
    from ...stores.logit_store import LogitStore

    try:
        store = LogitStore.open(path)
    except USER_ERRORS:
        return False
    return store.is_complete() and store.is_finalized


def run_done(path: Path) -> bool:
    """A student run is finished once ``final.pt`` exists."""
    from ..runtime.run_layout import FINAL

    return (path / FINAL).is_file()


# ------------------------------------------------------------------------------- the manifest


def _check_manifest(cfg: QuickstartConfig) -> None:
    """Refuse to mix runs: ``out`` may hold only a quickstart with the same settings."""
    root = cfg.out
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} exists and is not a directory")
    check_output_dir(root)
    manifest = root / MANIFEST
    if cfg.overwrite:
        for name in _OWNED:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError):
            raise UserError(f"{manifest} is not readable JSON; pass --overwrite") from None
        wanted = cfg.settings()
        for key in sorted(set(saved) | set(wanted)):
            if saved.get(key) != wanted.get(key):
                raise UserError(
                    f"{root} holds a quickstart run with {key}={saved.get(key)!r}, this one has "
                    f"{wanted.get(key)!r}; pass --overwrite or another --out"
                )
    elif root.is_dir() and any((root / name).exists() for name in _OWNED):
        raise UserError(
            f"{root} holds quickstart files but no {MANIFEST}; pass --overwrite or another --out"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"settings": cfg.settings()})


# ----------------------------------------------------------------------------------- the steps


def _make_shards(split: str, out: Path) -> None:
    from ..data.make_shards import MakeShardsConfig, make_shards

    # A directory without index.json was left by a killed make-shards: overwrite removes only
    # the tars it wrote.
    make_shards(MakeShardsConfig(source="digits", out_dir=out, split=split, overwrite=True))


def _train_teacher(cfg: QuickstartConfig, paths: Paths, name: str, arch: str) -> None:
    from ..runtime.run_layout import LAST
    from ..stages.teacher.config import TeacherTrainConfig
    from ..stages.teacher.run import train_teacher

    out = paths.teacher(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    resume = (out / LAST).is_file()
    train_teacher(
        TeacherTrainConfig(
            arch=arch,
            data=str(paths.train),
            val=str(paths.test),
            out=str(out),
            epochs=cfg.teacher_epochs,
            image_size=cfg.image_size,
            threads=cfg.threads,
            seed=cfg.seed,
            device=cfg.device,
            resume=resume,
            overwrite=not resume,
        )
    )


def _dump(cfg: QuickstartConfig, paths: Paths, results: _Results) -> None:
    from ...stores.logit_store import LogitStore
    from ..stages.dump.run import DumpConfig, TeacherSpec, print_summary, run_dump

    # An incomplete store of ours resumes. One that no longer opens (a killed creation, or an
    # older store format) is ours too — the manifest says DIR is a quickstart — so replace it.
    replace = False
    if paths.store.exists():
        try:
            LogitStore.open(paths.store)
        except USER_ERRORS as err:
            warn(f"re-dumping {paths.store}: {err}")
            replace = True
    summary = run_dump(
        DumpConfig(
            data=str(paths.train),
            teachers=tuple(
                TeacherSpec(name=name, arch=arch, checkpoint=paths.teacher(name))
                for name, arch in TEACHERS
            ),
            out=str(paths.store),
            views=cfg.views,
            topk=cfg.topk,
            seed=cfg.seed,
            aug=cfg.aug,
            device=cfg.device,
            threads=cfg.threads,
            overwrite=replace,
            progress=cfg.progress,
        )
    )
    print_summary(summary)
    results.store_written = True


def _train_student(
    cfg: QuickstartConfig, paths: Paths, run_dir: Path, token_mode: TokenMode, *, fresh: bool
) -> None:
    from ..runtime.run_layout import LAST
    from ..stages.student.config import StudentTrainConfig
    from ..stages.student.run import train_student

    resume = (run_dir / LAST).is_file() and not fresh
    train_student(
        StudentTrainConfig(
            data=str(paths.train),
            val=str(paths.test),
            out=str(run_dir),
            store=str(paths.store),
            model=STUDENT,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            # The quickstart's own tuned small-data settings, not a published recipe.
            recipe="small",
            lr=cfg.lr,
            token_mode=token_mode,
            patch_size=cfg.patch_size,
            device=cfg.device,
            threads=cfg.threads,
            resume=resume,
            # Without last.pt nothing resumable exists; clear a killed run's stale metrics.
            overwrite=not resume,
            progress=cfg.progress,
        )
    )


def _evaluate(cfg: QuickstartConfig, checkpoint: Path, data: Path) -> dict[str, Any]:
    from ..stages.evaluate.run import EvaluateConfig, evaluate

    return evaluate(
        EvaluateConfig(
            checkpoint=checkpoint, data=str(data), device=cfg.device, threads=cfg.threads
        )
    )


def plan_steps(cfg: QuickstartConfig, paths: Paths, results: _Results) -> list[Step]:
    """The overall step list, in order, each with its reuse test and its action."""
    steps = [
        Step(
            "make-shards digits → data/train",
            lambda: shards_done(paths.train),
            lambda: _make_shards("train", paths.train),
        ),
        Step(
            "make-shards digits → data/test",
            lambda: shards_done(paths.test),
            lambda: _make_shards("test", paths.test),
        ),
    ]
    for name, arch in TEACHERS:
        steps.append(
            Step(
                f"train-teacher {arch} → teachers/{name}/ ({cfg.teacher_epochs} epochs)",
                lambda name=name: teacher_epochs_done(paths.teacher(name)) >= cfg.teacher_epochs,  # type: ignore[misc]
                lambda name=name, arch=arch: _train_teacher(cfg, paths, name, arch),  # type: ignore[misc]
            )
        )
    steps.append(
        Step(
            f"dump-logits cnn + inn → store.zarr ({cfg.views} views, top-{cfg.topk})",
            lambda: store_done(paths.store),
            lambda: _dump(cfg, paths, results),
        )
    )
    steps.append(
        Step(
            f"train-student {STUDENT} from the store → runs/civt ({cfg.epochs} epochs)",
            # A student is only as finished as the store it learned from.
            lambda: run_done(paths.civt) and store_done(paths.store),
            lambda: _train_student(
                cfg, paths, paths.civt, "per-teacher", fresh=results.store_written
            ),
        )
    )
    steps.append(
        Step(
            f"baseline {STUDENT}, no distillation → runs/baseline ({cfg.epochs} epochs)",
            lambda: run_done(paths.baseline) and store_done(paths.store),
            lambda: _train_student(cfg, paths, paths.baseline, "none", fresh=results.store_written),
        )
    )

    def evaluate_all() -> None:
        from ..runtime.run_layout import FINAL

        for name, _ in TEACHERS:
            results.teachers[name] = _evaluate(cfg, paths.teacher(name), paths.test)
        results.models["student"] = _evaluate(cfg, paths.civt / FINAL, paths.test)
        results.models["baseline"] = _evaluate(cfg, paths.baseline / FINAL, paths.test)

    steps.append(Step("evaluate every model on data/test", lambda: False, evaluate_all))
    return steps


_MARKS = {
    "reuse": "[green]✓ reuse[/green]",
    "done": "[green]✓ done[/green] ",
    "running": "[yellow]▶ now[/yellow]  ",
    "pending": "[dim]· to do[/dim]",
}


def plan_lines(steps: list[Step]) -> list[str]:
    """The step list as rich markup, one line a step: its mark (reuse, done with its time, now,
    to do) and title."""
    lines = []
    for number, step in enumerate(steps, start=1):
        took = f" [dim]({step.seconds:.1f} s)[/dim]" if step.status == "done" else ""
        lines.append(f"  {number:>2}. {_MARKS[step.status]}  {step.title}{took}")
    return lines


def _print_plan(steps: list[Step], heading: str) -> None:
    # Printed again at every step (not a rich Live: the stages draw their own progress bars,
    # and rich allows one live display at a time), so the list a user scrolls back to is current.
    console.print(heading)
    console.print("\n".join(plan_lines(steps)))


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run (or resume) the quickstart; returns the result dict ``--json`` prints.

    Returns:
        ``{"teachers": {name: top1}, "baseline": {"top1", "top5"}, "student": {"top1",
        "top5", "heads": {head: {"top1", "top5"}}}, "steps": [{"title", "status", "seconds"}],
        "seconds", "out", "settings"}`` — accuracies are fractions on the digits test split.
    """
    started = time.perf_counter()
    _check_manifest(cfg)
    # Every torch stage gets cfg.threads itself (train-teacher, dump-logits, train-student,
    # evaluate each apply it through pipeline/device.py); nothing to set around them here.
    return _run(cfg, started)


def _run(cfg: QuickstartConfig, started: float) -> dict[str, Any]:
    paths = Paths(cfg.out)
    results = _Results()
    steps = plan_steps(cfg, paths, results)
    for step in steps:
        if step.done():
            step.status = "reuse"
    _print_plan(steps, "[bold]quickstart[/bold]: the whole pipeline on the built-in digits")
    for number, step in enumerate(steps, start=1):
        if step.status == "reuse":
            continue
        step.status = "running"
        console.rule(f"[bold]step {number}/{len(steps)}[/bold] · {step.title}", align="left")
        _print_plan(steps, "[bold]quickstart[/bold] steps:")
        tick = time.perf_counter()
        step.run()
        step.seconds = time.perf_counter() - tick
        step.status = "done"
        info(f"[green]✓[/green] step {number} done in {step.seconds:.1f} s")
    _print_plan(steps, "[bold]quickstart[/bold] finished:")
    seconds = time.perf_counter() - started

    student, baseline = results.models["student"], results.models["baseline"]
    result: dict[str, Any] = {
        "teachers": {name: float(r["top1"]) for name, r in results.teachers.items()},
        "teacher_archs": {name: arch for name, arch in TEACHERS},
        "baseline": {"top1": float(baseline["top1"]), "top5": float(baseline["top5"])},
        "student": {
            "top1": float(student["top1"]),
            "top5": float(student["top5"]),
            "heads": student["heads"],
        },
        "num_test_samples": int(student["num_samples"]),
        "steps": [
            {"title": s.title, "status": s.status, "seconds": round(s.seconds, 2)} for s in steps
        ],
        "seconds": round(seconds, 2),
        "out": str(cfg.out),
        "settings": cfg.settings(),
    }
    atomic_write_json(cfg.out / RESULTS, result)
    return result


def print_results(result: dict[str, Any]) -> None:
    """The closing table on stderr: each teacher, the baseline, and CivT per head."""
    from rich.table import Table

    table = Table(
        title=f"digits test split ({result['num_test_samples']} images), "
        f"{result['settings']['epochs']} student epochs"
    )
    table.add_column("model")
    table.add_column("what")
    table.add_column("top-1", justify="right")
    for name, top1 in result["teachers"].items():
        table.add_row(f"teacher {name}", result["teacher_archs"][name], f"{top1:.2%}")
    table.add_row("baseline", f"{STUDENT}, no distillation", f"{result['baseline']['top1']:.2%}")
    heads = result["student"]["heads"]
    labels = {"cls": "class token (headline)", "mean": "mean of the heads"}
    for head, acc in heads.items():
        what = labels.get(head, f"{head} token")
        table.add_row(f"CivT {head}", f"{STUDENT}, {what}", f"{acc['top1']:.2%}")
    console.print(table)
    gain = result["student"]["top1"] - result["baseline"]["top1"]
    info(
        f"CivT (class token) {result['student']['top1']:.2%} vs no distillation "
        f"{result['baseline']['top1']:.2%} ({gain * 100:+.2f} points); "
        f"{result['seconds']:.0f} s in {result['out']}"
    )
    info(
        "settings tuned for these small digits (train-student recipe small, lr "
        f"{result['settings']['lr']:g}), not the published ImageNet recipe (--recipe coadvise)"
    )

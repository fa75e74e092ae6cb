"""The plans: pure functions from the settings to the runs and to the tables and series built
from their results. Nothing here executes anything (see :mod:`.runner`).

Per seed ``s`` (docs/study.md has the full story):

- ``tables``: teachers cnn (``cnn-nano``, seed s), cnn2 (``cnn-nano``, seed 1000 + s) and inn
  (``inn-nano``, seed s); one store of all three; civt-nano students selecting teachers with
  ``--store-teacher`` (Tables 5, 6, 3), ``evaluate --store`` KL per head and teacher (Table 4),
  and teachers trained for fewer epochs (Figure 3).
- ``alignment``: the aligned CivT from the tables plan's store, with ``--lambda 0``, read
  through its class head alone, against none, per-teacher and the teachers themselves.
- ``views``: one store of V_max = epochs views and every class's logit; students
  replaying its first V views, or its first k logits, and the online reference (live teachers,
  a fresh view every epoch).
- ``cost``: the CPU seconds of stage one, stage two and the online run, and the break-even
  number of student runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ...models.teacher_spec import TeacherSpec
from ...models.token_mode import TokenMode
from ...runtime.run_layout import FINAL
from ...stages.dump.config import DumpConfig
from ...stages.evaluate.run import EvaluateConfig
from ...stages.student.config import StudentTrainConfig
from ...stages.teacher.config import TeacherTrainConfig
from .config import StudyConfig
from .runs import Run, RunKind, make_run

T = TypeVar("T")

Records = Mapping[str, Mapping[str, Any]]
"""Finished runs' ``done.json`` records by run id."""

STUDENT = "civt-nano"
STUDENT_LR = 2e-3
"""The quickstart's tuned small-data rate (train-student's ``small`` recipe otherwise)."""
SECOND_CNN_SEED = 1000
"""The second CNN teacher of seed s trains with seed 1000 + s: same recipe, other weights."""
FIGURE3_EPOCHS = (1, 2)
"""Teacher epochs of Figure 3's points, besides --teacher-epochs itself (a third young pair,
4 epochs, would add ~3 CPU minutes per seed on digits: over the plan's hour at 3 seeds)."""
VIEW_COUNTS = (1, 2, 5, 10, 30)
"""Stored views V of the views plan up to --epochs, and --epochs itself (a fresh view every
epoch): more views than epochs are never replayed."""
TOPK_COUNTS = (1, 3, 5)
"""Stored logits k of the views plan, besides every class."""


@dataclass(frozen=True)
class Measure:
    """One number of one seed, read from finished runs."""

    runs: tuple[str, ...]
    """The runs behind it (what a table cell links to)."""
    read: Callable[[Records], float]


@dataclass(frozen=True)
class Comparison:
    """A paired comparison inside one table: the cell (row, column) against the cell
    (reference_row, reference_column), seed by seed (see :mod:`.stats`)."""

    row: str
    reference_row: str
    column: str = "top-1"
    reference_column: str = "top-1"

    @property
    def label(self) -> str:
        """``"cls − per-teacher"`` (rows), or ``"civt-nano: CNN + INN − no teacher"`` (columns)."""
        if self.row == self.reference_row:
            return f"{self.row}: {self.column} − {self.reference_column}"
        return f"{self.row} − {self.reference_row}"


@dataclass
class TableSpec:
    """A table before the runs: per row and column, one :class:`Measure` per seed, and the
    paired comparisons reported beside it."""

    id: str
    title: str
    columns: list[str]
    rows: list[tuple[str, dict[str, list[Measure]]]]
    comparisons: list[Comparison] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    """Each column's quantity where the columns measure different things (the plot gives each
    quantity its own axis); empty: one quantity, top-1 % unless the title says otherwise."""


@dataclass
class PointSpec:
    """One point of a series: an x (fixed, or measured per seed) and a y per seed."""

    label: str
    x: float | list[Measure]
    values: list[Measure]


@dataclass
class SeriesSpec:
    id: str
    title: str
    x_label: str
    y_label: str
    x_log2: bool
    points: list[PointSpec]
    reference: PointSpec | None = None
    baseline: PointSpec | None = None
    """What every other point (and the reference) is compared with, seed by seed (None: no
    comparisons; a wall-time series has none)."""


@dataclass
class PlanSpec:
    """Everything a plan runs and reports, in execution order."""

    name: str
    seeds: list[int]
    runs: list[Run]
    tables: list[TableSpec] = field(default_factory=list)
    series: list[SeriesSpec] = field(default_factory=list)
    break_even: tuple[str, str, str] | None = None
    """Rows (stage one, stage two, online) of the ``cost`` table to compute n* from."""


# ------------------------------------------------------------------------------ measures


def top1(student: Run, evaluation: Run) -> Measure:
    """Headline top-1 (%) of ``evaluation`` (of ``student``'s final checkpoint)."""
    return Measure(
        (student.id, evaluation.id), lambda r: 100.0 * float(r[evaluation.id]["result"]["top1"])
    )


def head_top1(student: Run, evaluation: Run, head: str) -> Measure:
    """Top-1 (%) of one named head of ``student`` (e.g. ``cls`` of an aligned CivT)."""
    return Measure(
        (student.id, evaluation.id),
        lambda r: 100.0 * float(r[evaluation.id]["result"]["heads"][head]["top1"]),
    )


def mean_of(measures: Sequence[Measure]) -> Measure:
    """The mean of several numbers of one seed (e.g. the teachers' top-1)."""
    runs = tuple(run for m in measures for run in m.runs)
    return Measure(runs, lambda r: sum(m.read(r) for m in measures) / len(measures))


def kl(evaluation: Run, head: str, teacher: str) -> Measure:
    """KL(teacher ‖ head) from an ``evaluate --store`` run."""
    return Measure(
        (evaluation.id,),
        lambda r: float(r[evaluation.id]["result"]["kl_to_teachers"][head][teacher]),
    )


def cpu_seconds(run: Run) -> Measure:
    return Measure((run.id,), lambda r: float(r[run.id]["cpu_seconds"]))


def wall_seconds(run: Run) -> Measure:
    return Measure((run.id,), lambda r: float(r[run.id]["seconds"]))


# ------------------------------------------------------------------------------- the runs


class RunBook:
    """Builds the stage configs of a study and keeps each distinct run once, in order.

    One book per plan: a plan's runs are every run its book holds.
    """

    def __init__(
        self,
        cfg: StudyConfig,
        root: Path,
        data: str,
        num_classes: int,
        student_data: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.root = root
        self.data = data
        """The teachers' training shards (a pattern of the first --subset shards, or --data)."""
        self.student_data = data if student_data is None else student_data
        """The stores' and students' shards (the first --student-subset of them, or ``data``)."""
        self.num_classes = num_classes
        self.runs: dict[str, Run] = {}

    def _add(self, kind: RunKind, name: str, build: Callable[[Path], Any]) -> Run:
        run = make_run(kind, name, self.root, build)
        return self.runs.setdefault(run.id, run)

    def teacher(self, arch: str, seed: int, epochs: int | None = None) -> Run:
        """``train-teacher`` of ``arch`` (``--teacher-epochs`` unless ``epochs``)."""
        cfg = self.cfg
        epochs = cfg.teacher_epochs if epochs is None else epochs
        return self._add(
            "teacher",
            f"teacher-{arch}-e{epochs}-s{seed}",
            lambda d: TeacherTrainConfig(
                arch=arch,
                data=self.data,
                out=str(d / "teacher"),
                epochs=epochs,
                image_size=cfg.image_size,
                seed=seed,
                threads=cfg.threads,
                device=cfg.device,
            ),
        )

    def dump(self, teachers: Mapping[str, Run], *, views: int, seed: int) -> Run:
        """``dump-logits`` of ``teachers`` ({name: teacher run}) keeping every class's logit."""
        cfg = self.cfg
        specs = tuple(
            TeacherSpec(name=name, arch=run.config.arch, checkpoint=Path(run.config.out))
            for name, run in teachers.items()
        )
        return self._add(
            "dump",
            f"dump-{'-'.join(teachers)}-v{views}-s{seed}",
            lambda d: DumpConfig(
                data=self.student_data,
                teachers=specs,
                out=str(d / "store.zarr"),
                views=views,
                topk=self.num_classes,
                seed=seed,
                threads=cfg.threads,
                device=cfg.device,
                progress=cfg.progress,
            ),
        )

    def student(
        self,
        *,
        store: Run | None = None,
        online: Mapping[str, Run] | None = None,
        seed: int | None = None,
        model: str = STUDENT,
        token_mode: TokenMode = "per-teacher",
        store_teachers: tuple[str, ...] = (),
        store_views: int | None = None,
        store_topk: int | None = None,
        lambda_kd: float | None = None,
    ) -> Run:
        """``train-student`` from ``store``, or with the ``online`` teachers live (then one
        fresh view per epoch, ``seed`` the augmentation's); ``lambda_kd`` is ``--lambda``
        (every teacher's weight; train-student's default unless given). With
        ``--until-plateau`` the student validates on --val every epoch and may stop early."""
        cfg = self.cfg
        source: dict[str, Any]
        extra: dict[str, Any] = {}
        if lambda_kd is not None:
            extra["lambda_kd"] = lambda_kd
        if cfg.until_plateau is not None:
            extra.update(until_plateau=cfg.until_plateau, val=cfg.val)
        if store is not None:
            source = {"store": store.config.out}
            what = "-".join(store_teachers) if store_teachers else "all"
            name = f"student-{model}-{token_mode}-{what}"
            name += "".join(
                f"-{tag}{value}"
                for tag, value in (("v", store_views), ("k", store_topk), ("lam", lambda_kd))
                if value is not None
            )
            name += f"-s{store.config.seed}"
        else:
            if online is None or seed is None:
                raise ValueError("a student needs a store, or online teachers and a seed")
            source = {
                "teachers": tuple(
                    str(TeacherSpec(name=n, arch=run.config.arch, checkpoint=Path(run.config.out)))
                    for n, run in online.items()
                ),
                "views": cfg.epochs,
                "seed": seed,
            }
            name = f"student-{model}-{token_mode}-online-s{seed}"
        return self._add(
            "student",
            name,
            lambda d: StudentTrainConfig(
                data=self.student_data,
                out=str(d / "student"),
                model=model,
                epochs=cfg.epochs,
                lr=STUDENT_LR,
                token_mode=token_mode,
                threads=cfg.threads,
                device=cfg.device,
                progress=cfg.progress,
                store_teachers=store_teachers,
                store_views=store_views,
                store_topk=store_topk,
                **extra,
                **source,
            ),
        )

    def evaluate(self, target: Run, *, store: Run | None = None) -> Run:
        """``evaluate`` of a teacher's or student's final checkpoint on --val, or with
        ``store`` on the store's own (training) shards, reporting KL to its teachers."""
        cfg = self.cfg
        checkpoint = Path(target.config.out) / FINAL  # every trainer writes a run directory
        data = cfg.val if store is None else self.student_data
        extra = {} if store is None else {"store": store.config.out}
        return self._add(
            "evaluate",
            f"eval-{target.id}" + ("-kl" if store is not None else ""),
            lambda d: EvaluateConfig(
                checkpoint=checkpoint, data=data, threads=cfg.threads, device=cfg.device, **extra
            ),
        )

    def accuracy(self, run: Run) -> Measure:
        """Top-1 (%) on --val of a teacher or student run."""
        return top1(run, self.evaluate(run))


def _trio(book: RunBook, seed: int) -> dict[str, Run]:
    """The tables plan's teachers of ``seed``: cnn, cnn2 (seed 1000 + s) and inn."""
    return {
        "cnn": book.teacher("cnn-nano", seed),
        "cnn2": book.teacher("cnn-nano", SECOND_CNN_SEED + seed),
        "inn": book.teacher("inn-nano", seed),
    }


def _trio_store(book: RunBook, seed: int) -> Run:
    """The tables plan's store of ``seed``: all three teachers, V = --views (or --epochs)."""
    return book.dump(_trio(book, seed), views=book.cfg.table_views, seed=seed)


def _per_seed(
    seeds: Sequence[int], make: Callable[[int, T], Mapping[str, Measure]], row: T
) -> dict[str, list[Measure]]:
    """Columns of one row: ``make(seed, row)`` gives {column: measure}; collect them per seed."""
    cells: dict[str, list[Measure]] = {}
    for seed in seeds:
        for column, measure in make(seed, row).items():
            cells.setdefault(column, []).append(measure)
    return cells


# ---------------------------------------------------------------------------------- tables


def tables_plan(book: RunBook, seeds: Sequence[int]) -> PlanSpec:
    """Paper Tables 5, 6, 3, 4 and Figure 3 with civt-nano (docstring of this module)."""
    cfg = book.cfg
    # Seeds 0..minor_seeds-1, so that a range run on another machine (--first-seed) agrees.
    minor = [s for s in seeds if cfg.minor_seeds is None or s < cfg.minor_seeds]
    teachers = partial(_trio, book)
    store = partial(_trio_store, book)

    def student(seed: int, **options: Any) -> Run:
        return book.student(store=store(seed), **options)

    def acc(seed: int, **options: Any) -> Measure:
        return book.accuracy(student(seed, **options))

    def accuracy_cell(seed: int, options: dict[str, Any]) -> dict[str, Measure]:
        return {"top-1": acc(seed, **options)}

    both = ("cnn", "inn")
    table5_rows: list[tuple[str, dict[str, Any]]] = [
        ("none", {"token_mode": "none"}),
        ("CNN", {"store_teachers": ("cnn",)}),
        ("INN", {"store_teachers": ("inn",)}),
        ("two CNNs", {"store_teachers": ("cnn", "cnn2")}),
        ("CNN + INN", {"store_teachers": both}),
    ]
    table6_rows: list[tuple[str, dict[str, Any]]] = [
        ("none", {"token_mode": "none"}),
        *[(mode, {"token_mode": mode, "store_teachers": both}) for mode in ("cls", "shared")],
        ("per-teacher", {"store_teachers": both}),
        ("aligned", {"token_mode": "aligned", "store_teachers": both}),
    ]
    table5 = TableSpec(
        "table5",
        "Table 5: teacher sets (civt-nano, per-teacher tokens), top-1 %",
        ["top-1"],
        [(label, _per_seed(seeds, accuracy_cell, options)) for label, options in table5_rows],
        [Comparison(label, "none") for label, _ in table5_rows[1:]],
    )
    table6 = TableSpec(
        "table6",
        "Table 6: token modes (civt-nano, teachers CNN + INN), top-1 %",
        ["top-1"],
        [(label, _per_seed(seeds, accuracy_cell, options)) for label, options in table6_rows],
        [
            *[Comparison(label, "none") for label, _ in table6_rows[1:]],
            *[Comparison(mode, "per-teacher") for mode in ("cls", "shared", "aligned")],
        ],
    )

    def table3_row(seed: int, model: str) -> dict[str, Measure]:
        alone = acc(seed, model=model, token_mode="none")
        return {"no teacher": alone, "CNN + INN": acc(seed, model=model, store_teachers=both)}

    models = (STUDENT, "resnet10-nano", "mixer-nano")
    table3 = TableSpec(
        "table3",
        "Table 3: student biases, top-1 % without and with the CNN + INN teachers",
        ["no teacher", "CNN + INN"],
        [(model, _per_seed(minor, table3_row, model)) for model in models],
        [Comparison(model, model, "CNN + INN", "no teacher") for model in models],
    )

    def kl_cells(seed: int, head: str) -> dict[str, Measure]:
        evaluation = book.evaluate(student(seed, store_teachers=both), store=store(seed))
        return {teacher: kl(evaluation, head, teacher) for teacher in both}

    heads = ("cls", *both, "mean")
    table4 = TableSpec(
        "table4",
        "Table 4: KL(teacher ‖ head) of the CNN + INN per-teacher student, on the stored views",
        list(both),
        [(head, _per_seed(seeds, kl_cells, head)) for head in heads],
    )

    points = []
    for epochs in sorted({e for e in FIGURE3_EPOCHS if e < cfg.teacher_epochs}):
        xs, ys = [], []
        for seed in minor:
            pair = _pair(book, seed, epochs)
            young = book.dump(pair, views=cfg.table_views, seed=seed)
            xs.append(mean_of([book.accuracy(t) for t in pair.values()]))
            ys.append(book.accuracy(book.student(store=young)))
        points.append(PointSpec(f"teachers {epochs} epochs", xs, ys))
    # The last point is the main store's CNN + INN student (Table 5's row).
    full = [
        mean_of([book.accuracy(teachers(s)["cnn"]), book.accuracy(teachers(s)["inn"])])
        for s in minor
    ]
    points.append(
        PointSpec(
            f"teachers {cfg.teacher_epochs} epochs",
            full,
            [acc(s, store_teachers=both) for s in minor],
        )
    )
    figure3 = SeriesSpec(
        "figure3",
        "Figure 3: better teachers, better student? (CNN + INN, per-teacher tokens)",
        "mean teacher top-1 (%)",
        "student top-1 (%)",
        False,
        points,
        baseline=points[-1],
    )
    # A --first-seed range past --minor-seeds has no Table 3 or Figure 3.
    tables = [table5, table6, table3, table4] if minor else [table5, table6, table4]
    series = [figure3] if minor else []
    return PlanSpec("tables", list(seeds), list(book.runs.values()), tables, series)


# ------------------------------------------------------------------------------- alignment

STEMS_ONLY = "stems only (λ = 0, class head)"
"""The alignment table's row of the aligned architecture without any teacher signal."""
ALIGN_TEACHERS = ("teacher cnn", "teacher inn")
"""The alignment table's teacher rows: do the teachers beat the student trained alone?"""


def alignment_plan(book: RunBook, seeds: Sequence[int]) -> PlanSpec:
    """Is the aligned CivT's gain the stems, the alignment, or both? (docs/study.md)

    From the tables plan's store (so its none, per-teacher and aligned students are Table 6's):
    the aligned student, the same with ``--lambda 0`` (its teacher heads get no gradient), that
    run read through its class head alone (the stems trained on the labels only: no teacher
    signal reaches any weight of it), and the teachers themselves. With ``--student-subset``
    the students see a fraction of the images the teachers were trained on.
    """
    both = ("cnn", "inn")

    def cells(seed: int, row: str) -> dict[str, Measure]:
        def student(**options: Any) -> Run:
            return book.student(store=_trio_store(book, seed), **options)

        if row.startswith("teacher "):
            return {"top-1": book.accuracy(_trio(book, seed)[row.removeprefix("teacher ")])}
        if row == STEMS_ONLY:
            run = student(token_mode="aligned", store_teachers=both, lambda_kd=0.0)
            return {"top-1": head_top1(run, book.evaluate(run), "cls")}
        choices: dict[str, dict[str, Any]] = {
            "none": {"token_mode": "none"},
            "per-teacher": {"store_teachers": both},
            "aligned": {"token_mode": "aligned", "store_teachers": both},
            "aligned, λ = 0": {"token_mode": "aligned", "store_teachers": both, "lambda_kd": 0.0},
        }
        options = choices[row]
        return {"top-1": book.accuracy(student(**options))}

    rows = ["none", "per-teacher", "aligned", "aligned, λ = 0", STEMS_ONLY, *ALIGN_TEACHERS]
    table = TableSpec(
        "alignment",
        "Aligned CivT: the stems, the alignment, or both? (civt-nano, teachers CNN + INN), top-1 %",
        ["top-1"],
        [(row, _per_seed(seeds, cells, row)) for row in rows],
        [
            Comparison("aligned", "none"),
            Comparison(STEMS_ONLY, "none"),
            Comparison("aligned", STEMS_ONLY),
            Comparison("aligned", "aligned, λ = 0"),
            Comparison("aligned", "per-teacher"),
            Comparison("per-teacher", "none"),
            *[Comparison(teacher, STEMS_ONLY) for teacher in ALIGN_TEACHERS],
        ],
    )
    return PlanSpec("alignment", list(seeds), list(book.runs.values()), [table])


# ----------------------------------------------------------------------------------- views


def view_counts(epochs: int) -> list[int]:
    """V of the views plan: 1, 2, 5, 10, 30 and the epochs, at most the epochs."""
    return sorted({v for v in (*VIEW_COUNTS, epochs) if v <= epochs})


def topk_counts(num_classes: int) -> list[int]:
    """k of the views plan: 1, 3, 5 and every class, at most the class count."""
    return sorted({k for k in (*TOPK_COUNTS, num_classes) if k <= num_classes})


def _pair(book: RunBook, seed: int, epochs: int | None = None) -> dict[str, Run]:
    """The CNN and INN teachers of ``seed`` (``--teacher-epochs`` unless ``epochs``)."""
    return {
        "cnn": book.teacher("cnn-nano", seed, epochs),
        "inn": book.teacher("inn-nano", seed, epochs),
    }


def _online(book: RunBook, seed: int) -> Run:
    return book.student(online=_pair(book, seed), seed=seed)


def views_plan(book: RunBook, seeds: Sequence[int]) -> PlanSpec:
    """Accuracy and wall time vs stored views V, accuracy vs stored logits k, and the online
    reference (docstring of this module)."""
    epochs = book.cfg.epochs
    counts = view_counts(epochs)

    def store(seed: int) -> Run:
        return book.dump(_pair(book, seed), views=max(counts), seed=seed)

    def replay(seed: int, views: int, topk: int | None = None) -> Run:
        return book.student(store=store(seed), store_views=views, store_topk=topk)

    online = PointSpec(
        f"online, a fresh view each of {epochs} epochs",
        0.0,
        [book.accuracy(_online(book, s)) for s in seeds],
    )
    accuracy = SeriesSpec(
        "views",
        f"top-1 vs stored views V ({epochs} epochs; epoch e replays view e mod V)",
        "stored views V",
        "top-1 (%)",
        True,
        [
            PointSpec(f"V = {v}", float(v), [book.accuracy(replay(s, v)) for s in seeds])
            for v in counts
        ],
        online,
        baseline=online,
    )
    time = SeriesSpec(
        "views_time",
        "wall time of one student run vs stored views V",
        "stored views V",
        "seconds",
        True,
        [
            PointSpec(f"V = {v}", float(v), [wall_seconds(replay(s, v)) for s in seeds])
            for v in counts
        ],
        PointSpec(online.label, 0.0, [wall_seconds(_online(book, s)) for s in seeds]),
    )
    full = book.num_classes
    k_points = [
        PointSpec(
            f"k = {k}" + (" (all)" if k == full else ""),
            float(k),
            [book.accuracy(replay(s, epochs, None if k == full else k)) for s in seeds],
        )
        for k in topk_counts(full)
    ]
    topk = SeriesSpec(
        "topk",
        f"top-1 vs stored logits k (V = {epochs})",
        "logits kept per view and teacher k",
        "top-1 (%)",
        False,
        k_points,
        online,
        baseline=k_points[-1],  # every class's logit: what fewer logits lose
    )
    return PlanSpec("views", list(seeds), list(book.runs.values()), [], [accuracy, time, topk])


# ------------------------------------------------------------------------------------ cost


COST_ROWS = (
    "stage one: dump-logits (V = epochs)",
    "stage two: train-student from the store",
    "online: train-student, teachers live",
)


def cost_plan(book: RunBook, seeds: Sequence[int]) -> PlanSpec:
    """CPU and wall seconds of stage one, stage two and the online run; break-even n*."""

    def runs(seed: int) -> tuple[Run, Run, Run]:
        epochs = book.cfg.epochs
        dump = book.dump(_pair(book, seed), views=epochs, seed=seed)
        # --store-views E (all of this store's views) spells it as the views plan does, so
        # both plans share the store and this student.
        return dump, book.student(store=dump, store_views=epochs), _online(book, seed)

    def row(seed: int, index: int) -> dict[str, Measure]:
        run = runs(seed)[index]
        cells = {"CPU s": cpu_seconds(run), "wall s": wall_seconds(run)}
        if run.kind == "student":
            cells["top-1"] = book.accuracy(run)
        return cells

    table = TableSpec(
        "cost",
        "CPU and wall seconds per run",
        ["CPU s", "wall s", "top-1"],
        [(label, _per_seed(seeds, row, index)) for index, label in enumerate(COST_ROWS)],
        units={"CPU s": "seconds", "wall s": "seconds", "top-1": "top-1 (%)"},
    )
    return PlanSpec("cost", list(seeds), list(book.runs.values()), [table], [], COST_ROWS)


PLAN_BUILDERS: dict[str, Callable[[RunBook, Sequence[int]], PlanSpec]] = {
    "tables": tables_plan,
    "alignment": alignment_plan,
    "views": views_plan,
    "cost": cost_plan,
}

"""``civt-pipe study``: plans share identical runs, rendered commands parse back into the same
configs, a killed study resumes without redoing finished runs, results.json keeps its schema,
mean ± std is the sample standard deviation, and bad input is one line."""

from __future__ import annotations

import io
import json
import math
import shlex
import tarfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump import run as dump_run
from civt_pipe.pipeline.stages.evaluate import run as evaluate_run
from civt_pipe.pipeline.stages.student import run as student_run
from civt_pipe.pipeline.stages.teacher import run as teacher_run
from civt_pipe.pipeline.workflows.study import report
from civt_pipe.pipeline.workflows.study import run as study_run
from civt_pipe.pipeline.workflows.study.config import StudyConfig
from civt_pipe.pipeline.workflows.study.plans import (
    PLAN_BUILDERS,
    RunBook,
    topk_counts,
    view_counts,
)
from civt_pipe.pipeline.workflows.study.run import run_study
from civt_pipe.pipeline.workflows.study.runner import DONE
from civt_pipe.pipeline.workflows.study.runs import MACHINERY, Run


def _book(root: Path, **options: Any) -> RunBook:
    settings: dict[str, Any] = dict(data="/data/train", val="/data/test", out=root, seeds=2)
    settings.update(options)
    return RunBook(StudyConfig(**settings), root, "/data/train", num_classes=10)


# --------------------------------------------------------------------------- pure functions


def test_mean_std_is_the_sample_standard_deviation() -> None:
    mean, std = report.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # ddof = 1: 5 / (4 - 1)
    assert report.mean_std([7.0]) == (7.0, 0.0)
    assert report.format_cell({"mean": 7.0, "std": 0.0, "n": 1}) == "7.00"
    assert report.format_cell({"mean": 2.5, "std": 1.29099, "n": 4}) == "2.50 ± 1.29"
    with pytest.raises(ValueError):
        report.mean_std([])


def test_break_even_counts_student_runs_or_says_never() -> None:
    assert report.break_even(dump_cpu=60.0, store_cpu=50.0, online_cpu=94.0) == 2
    assert report.break_even(dump_cpu=10.0, store_cpu=50.0, online_cpu=94.0) == 1
    assert report.break_even(dump_cpu=60.0, store_cpu=50.0, online_cpu=50.0) is None


def test_stopped_epochs_count_a_student_that_never_stopped_as_all_epochs() -> None:
    found = report.stopped_epochs([{"stopped_at": 12}, {"stopped_at": None}, {}], epochs=30)
    assert found == {"epochs": [12, 30, 30], "mean": 24.0, "min": 12, "max": 30, "stopped_early": 1}


def test_view_and_topk_counts_are_deduplicated_and_bounded() -> None:
    assert view_counts(30) == [1, 2, 5, 10, 30]
    assert view_counts(10) == [1, 2, 5, 10]
    assert view_counts(4) == [1, 2, 4]
    assert view_counts(40) == [1, 2, 5, 10, 30, 40]
    assert topk_counts(10) == [1, 3, 5, 10]
    assert topk_counts(3) == [1, 3]


def test_identical_commands_are_one_run_across_tables_and_plans(tmp_path: Path) -> None:
    book = _book(tmp_path, epochs=16, teacher_epochs=3)
    tables = PLAN_BUILDERS["tables"](book, [0, 1])
    ids = [run.id for run in tables.runs]
    assert len(ids) == len(set(ids))
    kinds = [run.kind for run in tables.runs]
    # Per seed: cnn, cnn2, inn + the Figure 3 pairs at 1 and 2 epochs; the main store + two.
    assert kinds.count("teacher") == 2 * (3 + 4) and kinds.count("dump") == 2 * 3
    # Table 5's 5 rows, Table 6's cls/shared/aligned, Table 3's 4 others, Figure 3's 2 points.
    assert kinds.count("student") == 2 * (5 + 3 + 4 + 2)
    for run in tables.runs:  # every run comes after the runs it reads
        earlier = {r.id for r in tables.runs[: tables.runs.index(run)]} | {run.id}
        for word in shlex.split(run.command):
            if "runs/" in word:
                assert word.split("runs/")[1].split("/")[0] in earlier, run.command

    def cell(table: str, row: str, column: str) -> list[str]:
        spec = next(t for t in tables.tables if t.id == table)
        cells = dict(spec.rows)[row]
        return [r for m in cells[column] for r in m.runs]

    both = cell("table5", "CNN + INN", "top-1")
    assert both == cell("table6", "per-teacher", "top-1")
    assert both == cell("table3", "civt-nano", "CNN + INN")
    assert cell("table5", "none", "top-1") == cell("table6", "none", "top-1")
    assert cell("table5", "none", "top-1") == cell("table3", "civt-nano", "no teacher")
    assert both[0] in [r for m in tables.series[0].points[-1].values for r in m.runs]

    views = PLAN_BUILDERS["views"](_book(tmp_path, epochs=16, teacher_epochs=3), [0, 1])
    cost = PLAN_BUILDERS["cost"](_book(tmp_path, epochs=16, teacher_epochs=3), [0, 1])
    tables_ids, views_ids = set(ids), {r.id for r in views.runs}
    shared_teachers = {r.id for r in views.runs if r.kind == "teacher"}
    assert shared_teachers <= tables_ids  # the views plan's teachers are the tables plan's
    # The cost plan's store (V = epochs) is the views plan's.
    assert {r.id for r in cost.runs} <= views_ids
    # The alignment plan adds only the λ = 0 students (and their evaluations) to Table 6's.
    alignment = PLAN_BUILDERS["alignment"](_book(tmp_path, epochs=16, teacher_epochs=3), [0, 1])
    added = [r for r in alignment.runs if r.id not in tables_ids]
    assert len(added) == 2 * 2 and all("lam0.0" in r.id for r in added)
    assert all("--lambda 0.0" in r.command for r in added if r.kind == "student")


def test_minor_seeds_cut_table_3_and_figure_3_only(tmp_path: Path) -> None:
    book = _book(tmp_path, epochs=4, teacher_epochs=3, minor_seeds=2)
    tables = PLAN_BUILDERS["tables"](book, [0, 1, 2, 3, 4])
    counts = {t.id: {len(m) for _, cells in t.rows for m in cells.values()} for t in tables.tables}
    assert counts == {"table5": {5}, "table6": {5}, "table3": {2}, "table4": {5}}
    assert {len(p.values) for p in tables.series[0].points} == {2}
    kinds = [run.kind for run in tables.runs]
    # 5 seeds of Tables 5 and 6, 2 of Table 3's other students and of Figure 3's stores.
    assert kinds.count("student") == 5 * (5 + 3) + 2 * (4 + 2)
    assert kinds.count("dump") == 5 + 2 * 2


def test_seed_ranges_split_a_study_into_the_same_runs(tmp_path: Path) -> None:
    """--first-seed: ranges run on two machines are, together, exactly the whole study's runs
    (same ids, so copying their runs/ into one DIR reuses all of them); a range past
    --minor-seeds has no Table 3 or Figure 3."""
    whole = _book(tmp_path, epochs=4, teacher_epochs=3, seeds=5, minor_seeds=3)
    assert whole.cfg.seed_range == range(0, 5)
    full = PLAN_BUILDERS["tables"](whole, whole.cfg.seed_range)
    parts = []
    for first, last in ((0, 3), (3, 5)):
        book = _book(
            tmp_path, epochs=4, teacher_epochs=3, seeds=last, first_seed=first, minor_seeds=3
        )
        parts.append(PLAN_BUILDERS["tables"](book, book.cfg.seed_range))
    ids = [{r.id for r in part.runs} for part in parts]
    assert ids[0] | ids[1] == {r.id for r in full.runs}
    assert not ids[0] & ids[1]
    assert [t.id for t in parts[1].tables] == ["table5", "table6", "table4"]
    assert parts[1].series == [] and parts[1].seeds == [3, 4]
    assert [t.id for t in parts[0].tables] == ["table5", "table6", "table3", "table4"]


def test_first_seed_past_the_seeds_is_refused() -> None:
    with pytest.raises(UserError, match="--first-seed 3 leaves no seed of --seeds 3"):
        StudyConfig(data="/d", val="/v", out=Path("/o"), seeds=3, first_seed=3)


def test_student_subset_feeds_stores_and_students_but_not_teachers(tmp_path: Path) -> None:
    book = _book(tmp_path, epochs=4, teacher_epochs=2, student_subset=1)
    book.student_data = "/data/train/first.tar"
    plan = PLAN_BUILDERS["alignment"](book, [0])
    data = {r.kind: {r.config.data} for r in plan.runs if r.kind != "evaluate"}
    assert data == {
        "teacher": {"/data/train"},
        "dump": {"/data/train/first.tar"},
        "student": {"/data/train/first.tar"},
    }


def _reparse(run: Run, root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse ``run.command`` with the real CLI; the stage function only records its config."""
    seen: list[Any] = []

    class Captured(Exception):
        pass

    def capture(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(cfg)
        raise Captured

    targets = {
        "teacher": (teacher_run, "train_teacher"),
        "dump": (dump_run, "run_dump"),
        "student": (student_run, "train_student"),
        "evaluate": (evaluate_run, "evaluate"),
    }
    module, name = targets[run.kind]
    monkeypatch.setattr(module, name, capture)
    # The study's paths (/data/train, checkpoints not trained yet) do not exist: only the parse
    # is under test here; the refusals that look at paths are tests/test_bad_input.py's.
    monkeypatch.setattr(type(run.config), "preflight", lambda self: None)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, shlex.split(run.command)[1:])
    assert isinstance(result.exception, Captured), result.output
    return seen[0]


def _normalized(config: Any, root: Path) -> dict[str, str]:
    return {
        f.name: repr(getattr(config, f.name)).replace(f"{root}/", "")
        for f in fields(config)
        if f.name not in MACHINERY
    }


def test_rendered_commands_parse_back_into_the_same_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = _book(tmp_path, epochs=5, teacher_epochs=2, image_size=12)
    teachers = {"cnn": book.teacher("cnn-nano", 0), "inn": book.teacher("inn-nano", 0)}
    store = book.dump(teachers, views=8, seed=0)
    plateau = _book(tmp_path, epochs=5, teacher_epochs=2, image_size=12, until_plateau=3)
    runs = [
        *teachers.values(),
        store,
        book.student(store=store, token_mode="aligned", store_teachers=("cnn", "inn")),
        book.student(
            store=store, token_mode="aligned", store_teachers=("cnn", "inn"), lambda_kd=0.0
        ),
        plateau.student(store=store),
        book.student(store=store, store_views=2, store_topk=3),
        book.student(online=teachers, seed=1),
        book.evaluate(book.student(store=store), store=store),
    ]
    for run in runs:
        assert run.command.startswith("civt-pipe ") and str(tmp_path) not in run.command
        parsed = _reparse(run, tmp_path, monkeypatch)
        assert _normalized(parsed, tmp_path) == _normalized(run.config, tmp_path), run.command


# ------------------------------------------------------------------------ faked stage calls


class FakeStages:
    """Every stage replaced by a recorder: the study's bookkeeping without any training."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.fail_on: str | None = None
        monkeypatch.setattr(teacher_run, "train_teacher", self._stage("teacher", {"epoch": 1}))
        monkeypatch.setattr(dump_run, "run_dump", self._stage("dump", {"already_complete": True}))
        monkeypatch.setattr(student_run, "train_student", self._stage("student", {"step": 1}))
        monkeypatch.setattr(evaluate_run, "evaluate", self._evaluate)

    def _stage(self, kind: str, result: dict[str, Any]) -> Callable[[Any], dict[str, Any]]:
        def call(cfg: Any) -> dict[str, Any]:
            self.calls.append(kind)
            if self.fail_on == kind:
                raise KeyboardInterrupt  # the study is killed while this stage runs
            return result

        return call

    def _evaluate(self, cfg: Any) -> dict[str, Any]:
        self.calls.append("evaluate")
        # Accuracy from the checkpoint's name, so the tables hold distinct values.
        top1 = (sum(map(ord, str(cfg.checkpoint))) % 100) / 100
        heads = {"cls": {"top1": top1}, "mean": {"top1": top1}}
        kl = {h: {"cnn": 0.1, "cnn2": 0.2, "inn": 0.3} for h in ("cls", "cnn", "inn", "mean")}
        return {"top1": top1, "heads": heads, "kl_to_teachers": kl}


def _check_schema(results: dict[str, Any], plan: str) -> None:
    assert results["schema"] == 1
    assert set(results) == {"schema", "out", "seconds", "cpu_seconds", "plans", "runs"}
    entry = results["plans"][plan]
    assert {"settings", "seeds", "seconds", "cpu_seconds", "tables", "series", "plots"} <= set(
        entry
    )
    summary_keys = {"values", "mean", "std", "n", "runs"}
    for table in entry["tables"]:
        assert {"id", "title", "columns", "rows"} <= set(table)
        for row in table["rows"]:
            assert isinstance(row["label"], str)
            for column, cell in row["cells"].items():
                assert column in table["columns"] and summary_keys <= set(cell)
                assert len(cell["values"]) == cell["n"] == len(entry["seeds"])
                assert all(run in results["runs"] for run in cell["runs"])
    paired_keys = {"label", "differences", "mean", "std", "n", "low", "high", "separated"}
    for table in entry["tables"]:
        for comparison in table["paired"]:
            assert paired_keys <= set(comparison)
            assert len(comparison["differences"]) == len(entry["seeds"])
    for series in entry["series"]:
        assert {"id", "title", "x_label", "y_label", "x_log2", "points", "reference"} <= set(series)
        for comparison in series["paired"]:
            assert paired_keys | {"point", "baseline"} <= set(comparison)
        for point in series["points"]:
            assert {"x", "label"} | summary_keys <= set(point)
        if series["reference"] is not None:
            assert {"label"} | summary_keys <= set(series["reference"])
    for run_id, run in results["runs"].items():
        assert run["kind"] in ("teacher", "dump", "student", "evaluate")
        assert run["command"].startswith("civt-pipe ") and run["dir"] == f"runs/{run_id}"
        assert {"seconds", "cpu_seconds", "result"} <= set(run)


def _toy_config(root: Path, **options: Any) -> StudyConfig:
    settings: dict[str, Any] = dict(
        data=str(root / "train"),
        val=str(root / "test"),
        out=root / "study",
        seeds=1,
        epochs=1,
        teacher_epochs=1,
        image_size=8,
        device="cpu",
        progress=False,
    )
    settings.update(options)
    return StudyConfig(**settings)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study-data")
    # 5 shards of 20: --subset 4 keeps 80 samples, more than one batch of 64.
    make_toy_shards(root, "train", per_class=30)
    make_toy_shards(root, "test", per_class=6, seed=1)
    return root


def _study_dir(toy_data: Path, tmp_path: Path) -> Path:
    (tmp_path / "train").symlink_to(toy_data / "train")
    (tmp_path / "test").symlink_to(toy_data / "test")
    return tmp_path


def test_every_plan_writes_results_of_the_schema_and_merges_into_one_dir(
    toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _study_dir(toy_data, tmp_path)
    stages = FakeStages(monkeypatch)
    # Drawing is viz/study.py's to test (the slow end-to-end test here draws for real).
    monkeypatch.setattr(study_run, "draw_plots", lambda root, name, plan: [])
    for plan in ("tables", "alignment", "views", "cost"):
        results = run_study(_toy_config(root, plan=plan, seeds=2, teacher_epochs=3))
        _check_schema(results, plan)
    # --until-plateau: every student run validates on --val and may stop; results.md says how.
    plateau = run_study(_toy_config(root, plan="cost", seeds=2, teacher_epochs=3, until_plateau=2))
    assert plateau["plans"]["cost"]["stopped_at"]["epochs"] == [1, 1, 1, 1]  # fakes never stop
    stopping = [
        c["command"] for c in plateau["runs"].values() if "--until-plateau 2" in c["command"]
    ]
    assert len(stopping) == 4 and all(" --val /" in c for c in stopping)  # 2 students × 2 seeds
    assert (
        "Students with --until-plateau 2 trained 1.0 epochs"
        in (root / "study" / "results.md").read_text()
    )
    results = run_study(_toy_config(root, plan="cost", seeds=2, teacher_epochs=3))
    assert set(results["plans"]) == {"tables", "alignment", "views", "cost"}
    saved = json.loads((root / "study" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    table3 = saved["plans"]["tables"]["tables"][2]
    rows = {row["label"]: row["cells"] for row in table3["rows"]}
    for gain in table3["paired"]:  # each student's gain from its teachers, per seed
        cells = rows[gain["row"]]
        taught, alone = cells["CNN + INN"]["values"], cells["no teacher"]["values"]
        assert gain["differences"] == pytest.approx(
            [t - a for t, a in zip(taught, alone, strict=True)]
        )
    table6 = saved["plans"]["tables"]["tables"][1]
    assert {(c["row"], c["reference_row"]) for c in table6["paired"]} >= {
        ("cls", "none"),
        ("cls", "per-teacher"),
        ("aligned", "per-teacher"),
    }
    markdown = (root / "study" / "results.md").read_text()
    assert "## Plan `tables`" in markdown and "## Plan `cost`" in markdown
    assert "| − none | − per-teacher |" in markdown and "CNN + INN − no teacher" in markdown
    assert "up |" in markdown  # the sign count of every comparison
    assert "](runs/" in markdown and "/command.sh)" in markdown
    # The cost plan's runs were all made by the views plan before it (same commands).
    calls = len(stages.calls)
    run_study(_toy_config(root, plan="cost", seeds=2, teacher_epochs=3))
    assert len(stages.calls) == calls


def test_a_killed_study_resumes_without_redoing_finished_runs(
    toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _study_dir(toy_data, tmp_path)
    stages = FakeStages(monkeypatch)
    monkeypatch.setattr(study_run, "draw_plots", lambda root, name, plan: [])
    stages.fail_on = "student"
    with pytest.raises(KeyboardInterrupt):
        run_study(_toy_config(root, plan="cost"))
    assert stages.calls == ["teacher", "teacher", "dump", "student"]
    stages.calls.clear()
    stages.fail_on = None
    first = run_study(_toy_config(root, plan="cost"))
    # Teachers and store were done: only the students and their evaluations run now.
    assert stages.calls == ["student", "student", "evaluate", "evaluate"]
    stages.calls.clear()
    assert run_study(_toy_config(root, plan="cost"))["runs"] == first["runs"]
    assert stages.calls == []
    store_student = next(r for r in first["runs"] if r.startswith("student") and "online" not in r)
    (root / "study" / "runs" / store_student / DONE).unlink()
    run_study(_toy_config(root, plan="cost"))
    assert stages.calls == ["student"]
    command = (root / "study" / "runs" / store_student / "command.sh").read_text()
    assert first["runs"][store_student]["command"] in command


@pytest.mark.slow
def test_cost_plan_runs_end_to_end_on_toy_shards(toy_data: Path, tmp_path: Path) -> None:
    root = _study_dir(toy_data, tmp_path)
    results = run_study(_toy_config(root, plan="cost", subset=4))
    _check_schema(results, "cost")
    plan = results["plans"]["cost"]
    assert plan["settings"]["data"].endswith(
        "{train-000000.tar,train-000001.tar,train-000002.tar,train-000003.tar}"
    )
    rows = {row["label"]: row["cells"] for row in plan["tables"][0]["rows"]}
    for cells in rows.values():
        assert cells["CPU s"]["mean"] > 0 and cells["wall s"]["mean"] > 0
    student = next(cells for label, cells in rows.items() if "store" in label)
    assert 0 <= student["top-1"]["mean"] <= 100
    assert "break_even" in plan
    for run_id in results["runs"]:
        assert (root / "study" / "runs" / run_id / DONE).is_file()
    assert plan["plots"] == ["plots/cost-cost.png"]
    assert (root / "study" / "plots" / "cost-cost.png").stat().st_size > 0
    assert "![cost-cost](plots/cost-cost.png)" in (root / "study" / "results.md").read_text()


# ------------------------------------------------------------------------------ bad input


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["study", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("civt-pipe: error: ")
    return lines[0]


def test_bad_input_is_one_line(toy_data: Path, tmp_path: Path) -> None:
    data, val = str(toy_data / "train"), str(toy_data / "test")
    common = ["--data", data, "--val", val, "--out", str(tmp_path / "s")]
    line = _one_line_error([*common, "--plan", "nosuch"])
    assert all(name in line for name in ("tables", "alignment", "views", "cost"))
    assert "--seeds" in _one_line_error([*common, "--seeds", "0"])
    assert "--subset" in _one_line_error([*common, "--subset", "9"])
    assert "--student-subset 9" in _one_line_error([*common, "--student-subset", "9"])
    line = _one_line_error([*common, "--subset", "2", "--student-subset", "3"])
    assert "--student-subset 3" in line and "2 shards" in line

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    with tarfile.open(unlabelled / "x-000000.tar", "w") as tar:
        png = io.BytesIO()
        Image.new("L", (8, 8)).save(png, format="PNG")
        info = tarfile.TarInfo("a.png")
        info.size = len(png.getvalue())
        tar.addfile(info, io.BytesIO(png.getvalue()))
    line = _one_line_error(["--data", str(unlabelled), *common[2:]])
    assert "label" in line

    folder = tmp_path / "two-classes"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(folder / name / "0.png")
    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards

    make_shards(MakeShardsConfig(source=f"folder:{folder}", out_dir=tmp_path / "v2", split="train"))
    line = _one_line_error([*common[:2], "--val", str(tmp_path / "v2"), *common[4:]])
    assert "2 classes" in line and "3" in line
    assert not (tmp_path / "s").exists()

"""CAKD on digits at 16 px: no KD · logit KD · CAKD and its ablations, clean and noisy.

A ``vit-nano`` teacher trained by ``train-teacher`` on the whole digits training split, then a
``cnn-nano`` student per method and seed trained by ``train-cakd``, each evaluated on the digits
test split and on a noisy copy of it (``evaluate --noise``, the paper's robustness check).
``--student-images K`` gives the students only the first K training images of each class
(written as a ``folder:`` source and sharded by ``make-shards``): the setting where the teacher,
which saw them all, beats the CNN trained alone (see docs/results.md). Every step is a
``civt-pipe`` command, printed before it runs, and skipped when its output already exists
(re-run the same command to finish an interrupted run).

    .venv/bin/python bench/cakd_digits.py --out /tmp/cakd_bench [--seeds 0 1 2] [--epochs 10]
        [--teacher-epochs 60] [--student-images 0] [--batch-size B] [--lr LR] [--rows ...]
        [--noise 0.2] [--jobs 2]
        [--threads 1]

Prints markdown tables (mean ± standard deviation over the seeds, top-1 in %; then each row's
paired difference from no KD and from logit KD, seed by seed, with a 95 % Student-t interval)
and writes ``OUT/results.json`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "civt_pipe.cli"]

METHODS: dict[str, list[str]] = {
    "no KD": ["--method", "none"],
    "logit KD": ["--method", "logit"],
    "CAKD PCA only": ["--method", "cakd", "--projectors", "pca", "--no-multi-view"],
    "CAKD GL only": ["--method", "cakd", "--projectors", "gl", "--no-multi-view"],
    "CAKD w/o multi-view": ["--method", "cakd", "--no-multi-view"],
    "CAKD": ["--method", "cakd"],
}
"""Table row → ``train-cakd`` options (the three ``--no-multi-view`` CAKD rows are the paper's
Fig. 3a projector ablation)."""
BASELINES = ("no KD", "logit KD")
"""The rows every other row is compared with, seed by seed."""


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a[i] − b[i]`` over paired seeds and its 95 % Student-t interval ``(mean, low,
    high)`` (the study's :func:`civt_pipe.pipeline.workflows.study.stats.paired`); with one pair
    the interval is the point."""
    from civt_pipe.pipeline.workflows.study.stats import paired

    found = paired(a, b)
    low = found.low if found.low is not None else found.mean
    high = found.high if found.high is not None else found.mean
    return found.mean, low, high


def run(args: list[str], log: Path) -> str:
    """Run one ``civt-pipe`` command (stderr to ``log``) and return its stdout; a failure stops
    the benchmark."""
    print("$ civt-pipe " + shlex.join(args), flush=True)
    with log.open("w") as err:
        done = subprocess.run([*CLI, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}), see {log}")
    return done.stdout


def top1(args: list[str], out: Path) -> float:
    """``evaluate --json`` top-1, cached in ``out``."""
    return float(evaluation(args, out)["top1"])


def evaluation(args: list[str], out: Path) -> dict[str, Any]:
    """``evaluate --json`` (top-1 and, for a train-cakd student, transferability), cached."""
    if not out.exists():
        out.write_text(run([*args, "--json"], out.with_suffix(".log")))
    return json.loads(out.read_text())


def student_data(root: Path, per_class: int) -> Path:
    """The students' training shards: the whole split, or its first ``per_class`` images of
    each class (key order) written as a folder source and sharded."""
    if per_class == 0:
        return root / "data" / "train"
    shards = root / "data" / f"train-{per_class}-per-class"
    if (shards / "index.json").exists():
        return shards
    from PIL import Image

    from civt_pipe.pipeline.data.sources import open_source

    folder = root / "folders" / f"train-{per_class}-per-class"
    source = open_source("digits", "train")
    taken: dict[int, int] = {}
    for i, (key, label) in enumerate(zip(source.keys, source.labels, strict=True)):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            class_dir = folder / source.class_names[label]
            class_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.load_image(i)).save(class_dir / f"{key}.png")
    run(["make-shards", f"folder:{folder}", str(shards)], root / f"make-shards-{per_class}.log")
    return shards


def student(root: Path, name: str, seed: int, cfg: argparse.Namespace) -> dict[str, float]:
    """Train one student (unless done) and evaluate it clean and noisy."""
    slug = name.lower().replace(" ", "-").replace("/", "")
    run_dir = root / "runs" / f"{slug}-s{seed}"
    teacher = root / "teachers" / "vit-nano"
    if not (run_dir / "final.pt").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "train-cakd",
            "--data", str(student_data(root, cfg.student_images)),
            "--teacher", f"vit=vit-nano:{teacher}",
            "--model", "cnn-nano",
            "--out", str(run_dir),
            "--epochs", str(cfg.epochs),
            "--seed", str(seed),
            "--threads", str(cfg.threads),
            "--overwrite",
            *(["--batch-size", str(cfg.batch_size)] if cfg.batch_size else []),
            *(["--lr", str(cfg.lr)] if cfg.lr else []),
            *METHODS[name],
        ]  # fmt: skip
        run(args, root / "runs" / f"{slug}-s{seed}.log")
    evaluate = [
        "evaluate",
        "--checkpoint", str(run_dir / "final.pt"),
        "--data", str(root / "data" / "test"),
        "--threads", str(cfg.threads),
    ]  # fmt: skip
    noisy = [*evaluate, "--noise", str(cfg.noise), "--noise-seed", "0"]
    clean = evaluation(evaluate, run_dir / "eval-clean.json")
    return {
        "clean": float(clean["top1"]),
        "noisy": float(evaluation(noisy, run_dir / f"eval-noise{cfg.noise:g}.json")["top1"]),
        "transferability": float(clean.get("transferability", float("nan"))),
    }


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="CAKD on digits: four methods, clean and noisy.")
    parser.add_argument("--out", type=Path, default=Path("cakd_bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument(
        "--student-images", type=int, default=0, help="training images per class (0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="student batch (0: recipe)")
    parser.add_argument("--lr", type=float, default=0.0, help="student peak rate (0: recipe's)")
    parser.add_argument("--rows", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--noise", type=float, default=0.2, help="std of the noisy test copy")
    parser.add_argument("--jobs", type=int, default=2, help="students trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command")
    cfg = parser.parse_args()
    root: Path = cfg.out
    started = time.perf_counter()
    for split in ("train", "test"):
        if not (root / "data" / split / "index.json").exists():
            run(
                ["make-shards", "digits", str(root / "data" / split), "--split", split],
                root / f"make-shards-{split}.log",
            )
    teacher = root / "teachers" / "vit-nano"  # a run directory; final.pt once finished
    if not (teacher / "final.pt").exists():
        teacher.parent.mkdir(parents=True, exist_ok=True)
        args = [
            "train-teacher",
            "--arch", "vit-nano",
            "--data", str(root / "data" / "train"),
            "--val", str(root / "data" / "test"),
            "--out", str(teacher),
            "--epochs", str(cfg.teacher_epochs),
            "--threads", str(cfg.threads),
            *(["--resume"] if (teacher / "last.pt").exists() else []),
        ]  # fmt: skip
        run(args, root / "teacher.log")
    teacher_eval = ["evaluate", "--checkpoint", str(teacher), "--data", str(root / "data" / "test")]
    teacher_clean = top1(teacher_eval, root / "teachers" / "eval-clean.json")
    teacher_noisy = top1(
        [*teacher_eval, "--noise", str(cfg.noise), "--noise-seed", "0"],
        root / "teachers" / f"eval-noise{cfg.noise:g}.json",
    )
    student_data(root, cfg.student_images)  # once, before the students run in parallel
    jobs = [(name, seed) for seed in cfg.seeds for name in cfg.rows]
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        figures = list(pool.map(lambda job: student(root, job[0], job[1], cfg), jobs))
    results: dict[str, dict[str, list[float]]] = {
        name: {"clean": [], "noisy": [], "transferability": []} for name in cfg.rows
    }
    for (name, _), fig in zip(jobs, figures, strict=True):
        for key, value in fig.items():
            results[name][key].append(value)
    seconds = time.perf_counter() - started
    images = "all" if cfg.student_images == 0 else f"{cfg.student_images} per class"
    print()
    print(
        f"digits test split (359 images, 16 px), cnn-nano students on {images} training "
        f"images, {cfg.epochs} epochs, seeds {' '.join(map(str, cfg.seeds))}; top-1 %"
    )
    print()
    print(f"| student | clean | noisy (σ = {cfg.noise:g}) | transferability |")
    print("|---|---|---|---|")
    print(f"| vit-nano teacher | {100 * teacher_clean:.1f} | {100 * teacher_noisy:.1f} | |")
    for name, fig in results.items():
        cos = statistics.fmean(fig["transferability"])
        print(f"| {name} | {_cell(fig['clean'])} | {_cell(fig['noisy'])} | {cos:.3f} |")
    differences: dict[str, dict[str, dict[str, list[float]]]] = {}
    for base in (b for b in BASELINES if b in results):
        print(f"\npaired difference from {base} (points, mean [95 % t interval] over seeds)\n")
        print("| student | clean | noisy |")
        print("|---|---|---|")
        for name, fig in results.items():
            if name == base:
                continue
            row = differences.setdefault(base, {}).setdefault(name, {})
            cells = []
            for split in ("clean", "noisy"):
                mean, low, high = paired_difference(fig[split], results[base][split])
                row[split] = [mean, low, high]
                cells.append(f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
            print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\nwall time {seconds / 60:.1f} min")
    (root / "results.json").write_text(
        json.dumps(
            {
                "teacher": {"clean": teacher_clean, "noisy": teacher_noisy},
                "students": results,
                "paired_differences": differences,
                "settings": vars(cfg) | {"out": str(root)},
                "seconds": seconds,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""CAKD on digits at 16 px: no KD · logit KD · CAKD without multi-view · full CAKD, clean and noisy.

The Must-show experiment of issue 13 at CPU scale: a ``vit-nano`` teacher trained by
``train-teacher``, then a ``cnn-nano`` student per method and seed trained by ``train-cakd``,
each evaluated on the digits test split and on a noisy copy of it (``evaluate --noise``, the
paper's robustness check). Every step is a ``civt-pipe`` command, printed before it runs, and
skipped when its output already exists (re-run the same command to finish an interrupted run).

    .venv/bin/python bench/cakd_digits.py --out /tmp/cakd_bench [--seeds 0 1 2] [--epochs 10]
        [--teacher-epochs 30] [--noise 0.2] [--jobs 2] [--threads 1]

Prints a markdown table (mean ± standard deviation over the seeds, top-1 in %) and writes
``OUT/results.json`` with every figure.
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

CLI = [sys.executable, "-m", "civt_pipe.cli"]

METHODS: dict[str, list[str]] = {
    "no KD": ["--method", "none"],
    "logit KD": ["--method", "logit"],
    "CAKD w/o multi-view": ["--method", "cakd", "--no-multi-view"],
    "CAKD": ["--method", "cakd"],
}
"""Table row → ``train-cakd`` options."""


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
    if not out.exists():
        out.write_text(run([*args, "--json"], out.with_suffix(".log")))
    return float(json.loads(out.read_text())["top1"])


def student(root: Path, name: str, seed: int, cfg: argparse.Namespace) -> dict[str, float]:
    """Train one student (unless done) and evaluate it clean and noisy."""
    slug = name.lower().replace(" ", "-").replace("/", "")
    run_dir = root / "runs" / f"{slug}-s{seed}"
    teacher = root / "teachers" / "vit-nano.pt"
    if not (run_dir / "final.pt").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "train-cakd",
            "--data", str(root / "data" / "train"),
            "--teacher", f"vit=vit-nano:{teacher}",
            "--model", "cnn-nano",
            "--out", str(run_dir),
            "--epochs", str(cfg.epochs),
            "--seed", str(seed),
            "--threads", str(cfg.threads),
            "--overwrite",
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
    return {
        "clean": top1(evaluate, run_dir / "eval-clean.json"),
        "noisy": top1(noisy, run_dir / f"eval-noise{cfg.noise:g}.json"),
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
    parser.add_argument("--teacher-epochs", type=int, default=30)
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
    teacher = root / "teachers" / "vit-nano.pt"
    if not teacher.exists() or "train_state" in _teacher_state(teacher):
        teacher.parent.mkdir(parents=True, exist_ok=True)
        args = [
            "train-teacher",
            "--arch", "vit-nano",
            "--data", str(root / "data" / "train"),
            "--val", str(root / "data" / "test"),
            "--out", str(teacher),
            "--epochs", str(cfg.teacher_epochs),
            "--threads", str(cfg.threads),
            "--resume",
        ]  # fmt: skip
        run(args, root / "teacher.log")
    teacher_eval = ["evaluate", "--checkpoint", str(teacher), "--data", str(root / "data" / "test")]
    teacher_clean = top1(teacher_eval, root / "teachers" / "eval-clean.json")
    teacher_noisy = top1(
        [*teacher_eval, "--noise", str(cfg.noise), "--noise-seed", "0"],
        root / "teachers" / f"eval-noise{cfg.noise:g}.json",
    )
    jobs = [(name, seed) for seed in cfg.seeds for name in METHODS]
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        figures = list(pool.map(lambda job: student(root, job[0], job[1], cfg), jobs))
    results: dict[str, dict[str, list[float]]] = {
        name: {"clean": [], "noisy": []} for name in METHODS
    }
    for (name, _), fig in zip(jobs, figures, strict=True):
        results[name]["clean"].append(fig["clean"])
        results[name]["noisy"].append(fig["noisy"])
    seconds = time.perf_counter() - started
    print()
    print(
        f"digits test split (359 images, 16 px), cnn-nano students, {cfg.epochs} epochs, "
        f"seeds {' '.join(map(str, cfg.seeds))}; top-1 %"
    )
    print()
    print(f"| student | clean | noisy (σ = {cfg.noise:g}) |")
    print("|---|---|---|")
    print(f"| vit-nano teacher | {100 * teacher_clean:.1f} | {100 * teacher_noisy:.1f} |")
    for name, fig in results.items():
        print(f"| {name} | {_cell(fig['clean'])} | {_cell(fig['noisy'])} |")
    print(f"\nwall time {seconds / 60:.1f} min")
    (root / "results.json").write_text(
        json.dumps(
            {
                "teacher": {"clean": teacher_clean, "noisy": teacher_noisy},
                "students": results,
                "settings": vars(cfg) | {"out": str(root)},
                "seconds": seconds,
            },
            indent=1,
        )
    )


def _teacher_state(path: Path) -> dict[str, object]:
    """The teacher checkpoint's training state (epoch/total), to tell a finished one apart."""
    from civt_pipe.pipeline.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    config = ckpt.get("config") or {}
    state = ckpt.get("train_state") or {}
    if state.get("epoch") == config.get("epochs"):
        return {}
    return {"train_state": state}


if __name__ == "__main__":
    main()

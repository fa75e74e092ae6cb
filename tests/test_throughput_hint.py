"""The one-line hint when a training run's throughput collapses (pipeline/train/throughput.py)."""

from __future__ import annotations

from civt_pipe.pipeline.train.throughput import COLLAPSE_FACTOR, CollapseWatch


def test_first_epoch_is_the_reference_and_noise_is_not_a_collapse() -> None:
    watch = CollapseWatch(cpu=True)
    assert watch.check(1.0) is None  # no reference yet
    assert watch.epoch_done(2400, 10.0) is None  # 240 img/s
    assert watch.reference == 240.0
    assert watch.epoch_done(1200, 10.0) is None  # 2x slower: a busy moment, not a collapse
    assert watch.check(240.0 / COLLAPSE_FACTOR + 1) is None


def test_collapse_gives_one_cpu_hint_once() -> None:
    watch = CollapseWatch(cpu=True)
    watch.epoch_done(2400, 10.0)
    line = watch.epoch_done(280, 10.0)  # 28 img/s: the busy-machine case
    assert line is not None and "\n" not in line
    assert "28 img/s from 240" in line and "--threads 1" in line
    assert watch.check(1.0) is None  # said once per run


def test_accelerator_hint_names_loading_not_threads() -> None:
    watch = CollapseWatch(cpu=False)
    watch.epoch_done(1000, 1.0)
    line = watch.check(10.0)
    assert line is not None and "--threads" not in line and "--workers" in line


def test_empty_epochs_are_ignored() -> None:
    watch = CollapseWatch(cpu=True)
    assert watch.epoch_done(0, 1.0) is None and watch.reference is None
    assert watch.epoch_done(10, 0.0) is None and watch.reference is None

"""The benchmark's pure helpers compute the right figures (no timings are asserted)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_modules import load_bench

fidelity = load_bench("fidelity")
store_bytes = load_bench("store_bytes")
compute = load_bench("compute")
stages = load_bench("stages")


def test_topk_kl_matches_hand_computation_for_k1() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    p = torch.softmax(logits.double(), -1)[0]
    # Top-1 keeps p0 exactly (up to float16 rounding of the logit); the rest is spread evenly.
    top = float(torch.exp(torch.tensor(2.0, dtype=torch.float16).double() - logits.logsumexp(-1)))
    q = torch.tensor([top, *(3 * [(1 - top) / 3])], dtype=torch.float64)
    expected = float((p * (p / q).log()).sum())
    got = float(fidelity.topk_kl(logits, 1)[0])
    assert got == pytest.approx(expected, rel=1e-5)


def test_topk_kl_shrinks_with_k_and_vanishes_at_full() -> None:
    logits, _ = fidelity.synthetic_logits(64, 50, seed=3)
    means = [float(fidelity.topk_kl(logits, k).mean()) for k in (1, 5, 10, 50)]
    assert means == sorted(means, reverse=True)
    assert means[0] > 0.1
    # k = C: only the float16 rounding of the log-probabilities is left.
    assert 0 <= means[-1] < 1e-4


def test_fidelity_table_caps_k_and_reports_leftover_mass() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    rows = fidelity.fidelity_table(logits, [1, 10])
    assert [r.k for r in rows] == [1, 3]
    uniform_leftover = 2 / 3
    first_leftover = 1 - math.exp(3) / (math.exp(3) + math.e + 1)
    assert rows[0].mean_leftover == pytest.approx((first_leftover + uniform_leftover) / 2, rel=1e-3)
    assert rows[1].mean_leftover == pytest.approx(0.0, abs=1e-3)


def test_synthetic_logits_are_seeded_and_peaked() -> None:
    a, labels = fidelity.synthetic_logits(200, 1000, seed=1)
    b, _ = fidelity.synthetic_logits(200, 1000, seed=1)
    assert torch.equal(a, b)
    stats = fidelity.distribution_stats(a)
    assert 0.5 < stats["mean_top1_prob"] < 0.9
    assert (a.argmax(-1) == labels).float().mean() > 0.5


def test_raw_bytes_per_view_teacher_counts_values_indices_and_lse() -> None:
    assert store_bytes.raw_bytes_per_view_teacher(10, 1000) == 10 * 2 + 10 * 2 + 4
    assert store_bytes.raw_bytes_per_view_teacher(5, 40000) == 5 * 2 + 5 * 4 + 4


def test_compare_with_published_uses_the_reference_at_equal_k() -> None:
    apple = store_bytes.compare_with_published(30.0, 10)
    assert apple["reference"] == "apple_reinforced_imagenet"
    assert apple["ratio"] == pytest.approx(30 / 65) and apple["met"]
    fkd = store_bytes.compare_with_published(16.0, 5)
    assert fkd["reference"] == "fkd" and not fkd["met"]
    assert store_bytes.compare_with_published(8.0, 1) == {}


def test_store_bytes_report_divides_chunk_bytes_by_samples_and_views(tmp_path: Path) -> None:
    n, views, classes = 70, 2, 20
    logits = {
        "a": fidelity.synthetic_logits(n * views, classes, seed=0)[0].view(n, views, classes),
        "b": fidelity.synthetic_logits(n * views, classes, seed=1)[0].view(n, views, classes),
    }
    path = tmp_path / "s.zarr"
    store_bytes.write_synthetic_store(
        path, teacher_logits=logits, k=3, num_views=views, shard_size=50, image_size=32
    )
    report = store_bytes.store_bytes_report(path)

    def data_bytes(folder: Path) -> int:
        return sum(
            p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"
        )

    expected_a = data_bytes(path / "teachers" / "a") / (n * views)
    assert report["teachers"]["a"]["total"] == pytest.approx(expected_a)
    mean = (report["teachers"]["a"]["total"] + report["teachers"]["b"]["total"]) / 2
    assert report["per_view_teacher"] == pytest.approx(mean)
    assert report["aug_per_view"] == pytest.approx(data_bytes(path / "aug") / (n * views))
    assert report["samples"] == n and report["views"] == views and report["k"] == 3


def test_truncate_store_keeps_the_leading_logits(tmp_path: Path) -> None:
    from civt_pipe.stores.logit_store import LogitStore

    n, views, classes = 30, 1, 12
    logits = {"a": fidelity.synthetic_logits(n, classes, seed=2)[0].view(n, views, classes)}
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    store_bytes.write_synthetic_store(
        src, teacher_logits=logits, k=5, num_views=views, shard_size=30, image_size=32
    )
    store_bytes.truncate_store(src, dst, 2)
    full = LogitStore.open(src).read_shard("syn-000000.tar").teachers["a"]
    cut = LogitStore.open(dst)
    assert cut.topk == 2 and cut.is_complete()
    top = cut.read_shard("syn-000000.tar").teachers["a"]
    assert torch.equal(top.logprobs, full.logprobs[..., :2])
    assert torch.equal(top.indices, full.indices[..., :2])
    assert torch.equal(top.lse, full.lse)
    with pytest.raises(ValueError, match="top-k"):
        store_bytes.truncate_store(src, tmp_path / "x.zarr", 6)


def test_median_steps_per_s_is_the_median_rate_per_batch() -> None:
    records = [{"images_per_s": 6.4}, {"images_per_s": 128.0}, {"images_per_s": 640.0}]
    assert stages.median_steps_per_s(records, 64) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        stages.median_steps_per_s([], 64)


def test_step_records_keeps_only_step_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "step", "images_per_s": 1}\n{"kind": "epoch"}\n\n'
        '{"kind": "step", "images_per_s": 2}\n'
    )
    assert [r["images_per_s"] for r in stages.step_records(path)] == [1, 2]


def test_online_ideal_ratio() -> None:
    assert compute.online_ideal_ratio(0.1, 0.05) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        compute.online_ideal_ratio(0.0, 1.0)


def test_median_seconds_times_every_call_after_warmup() -> None:
    calls: list[int] = []
    seconds = compute.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0


def test_digest_column_of_synthetic_store_is_uint64(tmp_path: Path) -> None:
    from civt_pipe.stores.logit_store import LogitStore

    logits = {"a": fidelity.synthetic_logits(8, 10, seed=4)[0].view(8, 1, 10)}
    store_bytes.write_synthetic_store(
        tmp_path / "s.zarr", teacher_logits=logits, k=2, num_views=1, shard_size=8, image_size=32
    )
    block = LogitStore.open(tmp_path / "s.zarr").read_shard("syn-000000.tar")
    assert block.digests.dtype == np.uint64
    assert list(block.labels) == list(logits["a"][:, 0].argmax(-1).numpy())


def test_interleaved_median_seconds_alternates_the_functions() -> None:
    order: list[str] = []
    times = compute.interleaved_median_seconds(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1
    )
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert set(times) == {"a", "b"}


def test_peak_rss_reads_this_process_memory() -> None:
    peak_rss = load_bench("peak_rss")
    assert peak_rss.status_kib("VmHWM") > 0
    assert peak_rss.pss_kib("self") > 0
    assert peak_rss.status_kib("NoSuchField") == 0
    with peak_rss.TreeSampler(interval=0.01) as sampler:
        buffer = bytearray(8 * 2**20)
        buffer[::4096] = b"\x01" * len(buffer[::4096])
        time.sleep(0.1)
    assert sampler.peak_kib >= 8 * 1024

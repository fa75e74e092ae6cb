"""Image decoding (issue 14 part 2): torchvision.io by default, PIL for the formats it lacks,
nvjpeg batches on a GPU, and the decoder a store records checked when it is replayed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.io
from bench_modules import load_bench
from PIL import Image
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.imageio import (
    decode_batch,
    decode_image_bytes,
    image_kind,
    resolve_decoder,
    torchvision_reads,
)
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.planning import plan_training
from civt_pipe.pipeline.data.reader import iter_shard
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.replay.binding import bind_store
from civt_pipe.pipeline.replay.segments import ViewSource, iter_view_batches
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.stores.logit_store import LogitStore


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured RGB picture (gradients, stripes and some noise): JPEG-like content."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 32 * 8], -1)
    noise = np.random.default_rng(seed).normal(0, 16, (h, w, 3))
    return (base + noise).clip(0, 255).astype(np.uint8)


def _encode(image: np.ndarray | Image.Image, fmt: str, **kw: Any) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _cases() -> dict[str, bytes]:
    rgb = _picture(37, 53)
    big = _picture(96, 80, seed=1)
    wide = rgb[:, :, 0].astype(np.uint16) * 257 + 3
    return {
        "png-rgb": _encode(rgb, "PNG"),
        "png-gray": _encode(rgb[:, :, 0], "PNG"),
        "png-rgba": _encode(np.dstack([rgb, rgb[:, :, 1]]), "PNG"),
        "png-palette": _encode(Image.fromarray(rgb).convert("P"), "PNG"),
        "png-16bit": _encode(Image.fromarray(wide), "PNG"),
        "jpg-444": _encode(rgb, "JPEG", quality=90, subsampling=0),
        "jpg-420": _encode(big, "JPEG", quality=75, subsampling=2),
        "jpg-420-progressive": _encode(big, "JPEG", quality=75, subsampling=2, progressive=True),
        "jpg-444-progressive": _encode(rgb, "JPEG", subsampling=0, progressive=True),
        "jpg-gray": _encode(big[:, :, 1], "JPEG"),
        "jpg-cmyk": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "webp": _encode(rgb, "WEBP"),
        "gif": _encode(rgb, "GIF"),
    }


CASES = _cases()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_torchvision_decodes_the_same_pixels_as_pil(name: str, channels: int) -> None:
    data = CASES[name]
    assert torchvision_reads(data)  # the torchvision path really runs
    ours = decode_image_bytes(data, channels, "torchvision")
    theirs = decode_image_bytes(data, channels, "pil")
    assert ours.dtype == torch.uint8 and ours.shape[0] == channels and ours.is_contiguous()
    assert torch.equal(ours, theirs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 on its codecs
@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM"])
def test_formats_torchvision_lacks_decode_through_pil(fmt: str) -> None:
    picture = _picture(9, 11)
    data = _encode(picture, fmt)
    assert not torchvision_reads(data) and image_kind(data) is None
    with pytest.raises(RuntimeError):  # what the fallback is for
        torchvision.io.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    image = decode_image_bytes(data, 3, "torchvision")
    assert torch.equal(image, torch.from_numpy(picture).permute(2, 0, 1))


def test_image_kind_reads_the_signature_not_the_name() -> None:
    assert image_kind(CASES["jpg-444"]) == "jpg" and image_kind(CASES["png-rgb"]) == "png"
    assert image_kind(CASES["webp"]) is None and image_kind(b"") is None


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_corrupt_image_is_one_line_naming_shard_and_key(tmp_path: Path) -> None:
    good = CASES["jpg-420"]
    shard = _tar(
        tmp_path / "s.tar",
        [("a.jpg", good), ("a.cls", b"0"), ("b.jpg", good[: len(good) // 3]), ("b.cls", b"1")],
    )
    with pytest.raises(UserError) as err:
        list(iter_shard(shard, channels=3))
    message = str(err.value)
    assert "\n" not in message and f"shard {shard}: sample b image .jpg cannot" in message
    assert message.endswith("(Image is incomplete or truncated)")  # no C++ source lines
    skipped = list(iter_shard(shard, channels=3, on_error="skip"))
    assert [s.image is None for s in skipped] == [False, True]


def test_make_shards_names_a_corrupt_file(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        (tmp_path / "src" / cls / "ok.jpg").write_bytes(CASES["jpg-444"])
    bad = tmp_path / "src" / "b" / "bad.jpg"
    bad.write_bytes(CASES["jpg-444"][:200])
    config = MakeShardsConfig(source=f"folder:{tmp_path / 'src'}", out_dir=tmp_path / "out")
    with pytest.raises(UserError) as err:
        make_shards(config)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


class _FakeNvjpeg:
    """Stands in for ``torchvision.io.decode_jpeg`` on a GPU: records the batched calls and
    decodes on the CPU (the outputs then carry the dispatch, not nvjpeg's pixels)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.cpu_decode = torchvision.io.decode_jpeg

    def __call__(self, data: Any, *, mode: Any, device: Any) -> list[torch.Tensor]:
        assert isinstance(data, list), "the GPU path decodes a list at once"
        self.calls.append((len(data), torch.device(device).type))
        out = []
        for encoded in data:
            image = self.cpu_decode(encoded, mode=mode)
            assert isinstance(image, torch.Tensor)
            out.append(image)
        return out


@pytest.fixture
def fake_nvjpeg(monkeypatch: pytest.MonkeyPatch) -> _FakeNvjpeg:
    fake = _FakeNvjpeg()
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake)
    return fake


def test_only_nvjpeg_on_a_cuda_device_takes_the_batched_gpu_decoder(
    fake_nvjpeg: _FakeNvjpeg,
) -> None:
    datas = [CASES["jpg-444"], CASES["png-rgb"], CASES["jpg-420"], CASES["gif"]]
    cpu = [decode_image_bytes(d, 3) for d in datas]
    for decoder in ("torchvision", "pil"):
        decode_batch(datas, 3, decoder, torch.device("cuda"))  # type: ignore[arg-type]
    decode_batch(datas, 3, "nvjpeg", torch.device("cpu"))
    assert fake_nvjpeg.calls == []
    got = decode_batch(datas, 1, "nvjpeg", torch.device("cuda"))
    assert fake_nvjpeg.calls == [(2, "cuda")]  # both JPEGs in one call; PNG and GIF on the CPU
    gray = [decode_image_bytes(d, 1) for d in datas]
    assert all(torch.equal(a, b) for a, b in zip(got, gray, strict=True))
    decode_batch(datas, 3, "nvjpeg")  # the default device of the GPU decoder is cuda
    assert fake_nvjpeg.calls[-1] == (2, "cuda") and len(cpu) == 4


def test_the_reader_hands_nvjpeg_batches_and_still_names_a_bad_image(
    fake_nvjpeg: _FakeNvjpeg, tmp_path: Path
) -> None:
    good = CASES["jpg-420"]
    members: list[tuple[str, bytes]] = []
    for i in range(5):
        members += [(f"k{i}.jpg", good if i != 3 else good[:100]), (f"k{i}.cls", b"0")]
    shard = _tar(tmp_path / "s.tar", members)
    samples = list(iter_shard(shard, channels=3, on_error="skip", decoder="nvjpeg"))
    assert [s.key for s in samples] == [f"k{i}" for i in range(5)]
    assert [s.position for s in samples] == list(range(5))
    assert [s.image is None for s in samples] == [False, False, False, True, False]
    assert fake_nvjpeg.calls[0] == (5, "cuda")  # one batch for the shard's five images
    with pytest.raises(UserError, match=r"sample k3 image \.jpg cannot be decoded"):
        list(iter_shard(shard, channels=3, decoder="nvjpeg"))


def test_resolve_decoder_rules() -> None:
    assert resolve_decoder("auto", device_type="cpu", workers=2) == "torchvision"
    assert resolve_decoder("pil", device_type="cpu", workers=2) == "pil"
    assert resolve_decoder("nvjpeg", device_type="cuda", workers=0) == "nvjpeg"
    # A store replays with its own decoder; one that records none was made with PIL.
    assert resolve_decoder("auto", device_type="cpu", workers=1, store="s", recorded=None) == "pil"
    assert resolve_decoder("pil", device_type="cpu", workers=1, store="s") == "pil"
    assert (
        resolve_decoder("auto", device_type="cuda", workers=0, store="s", recorded="nvjpeg")
        == "nvjpeg"
    )
    refusals = [
        ({"asked": "torchvision", "store": "s", "recorded": "pil"}, "--decoder auto"),
        ({"asked": "pil", "store": "s", "recorded": "nvjpeg"}, "--decoder auto"),
        ({"asked": "auto", "store": "s", "recorded": "nvjpeg"}, "--device cuda"),
        ({"asked": "nvjpeg"}, "--device cuda"),
        ({"asked": "auto", "store": "s", "recorded": "magic"}, "unknown decoder"),
        ({"asked": "opencv"}, "--decoder must be one of"),
    ]
    for kwargs, needle in refusals:
        with pytest.raises(UserError) as err:
            resolve_decoder(**kwargs, device_type="cpu", workers=0)  # type: ignore[arg-type]
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="--workers 0"):
        resolve_decoder("nvjpeg", device_type="cuda", workers=1)


@pytest.fixture(scope="module")
def jpeg_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Color JPEG shards copied from a folder and a store dumped from them (torchvision)."""
    root = tmp_path_factory.mktemp("decode")
    for i in range(24):
        folder = root / "src" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        sub = 2 if i % 3 else 0
        (folder / f"im{i}.jpg").write_bytes(
            _encode(_picture(20 + i % 5, 18 + i % 4, seed=i), "JPEG", subsampling=sub)
        )
    make_shards(
        MakeShardsConfig(source=f"folder:{root / 'src'}", out_dir=root / "train", shard_size=12)
    )
    torch.manual_seed(0)
    model = create_model("cnn-nano", num_classes=2, in_chans=3, image_size=16)
    save_checkpoint(root / "t.pt", make_checkpoint(model))
    store = root / "s.zarr"
    config = DumpConfig(
        data=str(root / "train"),
        teachers=(TeacherSpec.parse(f"cnn=cnn-nano:{root / 't.pt'}"),),
        out=str(store),
        views=1,
        topk=2,
        workers=0,
        device="cpu",
        threads=1,
        progress=False,
    )
    run_dump(config)
    return {"root": root, "data": str(root / "train"), "store": store}


def _replay_all(world: dict[str, Any], decoder: str) -> int:
    shard_set = resolve_shards(world["data"])
    setup = bind_store(world["store"], world["data"], shard_set, decoder=decoder)
    plan = plan_training(
        setup.shards, seed=0, epoch=0, rank=0, world_size=1, batch_size=8, shuffle_buffer=8
    )
    source = ViewSource(
        aug=setup.aug,
        seed=setup.seed,
        num_classes=setup.num_classes,
        channels=setup.channels,
        store=setup.store,
        verify="all",  # every replayed view against the digest stage one stored
        decoder=setup.decoder,
    )
    return sum(len(b.labels) for b in iter_view_batches(source, setup.shards, plan, view=0))


def test_a_store_records_its_decoder_and_replays_with_it(jpeg_store: dict[str, Any]) -> None:
    assert LogitStore.open(jpeg_store["store"]).user_attrs["decoder"] == "torchvision"
    assert _replay_all(jpeg_store, "auto") == 24
    assert _replay_all(jpeg_store, "torchvision") == 24


def test_replaying_with_another_decoder_is_refused_in_one_line(
    jpeg_store: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(
        UserError, match="dumped with the torchvision decoder, but --decoder is pil"
    ):
        _replay_all(jpeg_store, "pil")
    args = ["train-student", "--data", jpeg_store["data"], "--store", str(jpeg_store["store"])]
    args += ["--model", "civt-nano", "--out", str(tmp_path / "run"), "--decoder", "pil"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("civt-pipe: error: store ") and "--decoder auto" in line


def test_pil_decodes_the_stores_jpegs_as_torchvision_does(jpeg_store: dict[str, Any]) -> None:
    """Why refusing a CPU decoder mismatch is a safeguard, not a fix: on this machine both
    decode the store's copied JPEGs (4:4:4 and 4:2:0) to the same pixels."""
    shard_set = resolve_shards(jpeg_store["data"])
    for name in shard_set.names:
        pil = [s.image for s in iter_shard(shard_set.path(name), channels=3, decoder="pil")]
        ours = [s.image for s in iter_shard(shard_set.path(name), channels=3)]
        assert len(ours) == 12
        for a, b in zip(pil, ours, strict=True):
            assert a is not None and b is not None and torch.equal(a, b)


def test_the_decode_bench_reports_both_decoders_and_their_agreement() -> None:
    module = load_bench("decode_speed")
    result = module.decode_speed(images=2, repeats=1)
    for fmt in ("jpeg", "png"):
        figures = result[fmt]
        assert figures["pil_images_per_s"] > 0 and figures["torchvision_images_per_s"] > 0
        assert figures["images_with_different_pixels"] == 0

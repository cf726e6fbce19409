"""The trainer's GPU data pipeline, run on the CPU (torchvision's decode_jpeg takes the same list
and device arguments there); CUDA streams are checked against a fake torch.cuda."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.classify import data, gpu_pipeline, readers
from train.classify.config import UsageError

PHOTOS = sorted((Path(__file__).resolve().parents[3] / "samples/photos").glob("*.jpg"))


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def photo(i=0, size=(150, 110)) -> Image.Image:
    return Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB").resize(size, Image.BICUBIC)


def samples_of(items: list, targets=None) -> readers.Samples:
    targets = np.arange(len(items), dtype=np.int64) % 2 if targets is None else targets
    return readers.Samples(items, targets, ["a", "b"], "test")


@pytest.mark.parametrize("size, scale, hflip", [(32, 0.25, True), (24, 0.08, False), (64, 0.5, True)])
def test_device_crop_is_the_cpu_train_transform_bitwise(size, scale, hflip):
    """Same random draws in the same order: the GPU pipeline crops exactly what the CPU one would."""
    img = torch.randint(0, 256, (3, 97, 131), dtype=torch.uint8)
    aug = gpu_pipeline.DeviceAugment("cpu", size, scale, hflip)
    cpu = data.train_transform(size, scale, hflip)
    for seed in range(60):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = cpu(img).as_subclass(torch.Tensor)
        assert torch.equal(aug.crop(img, seed), expected), seed


def test_crop_leaves_the_global_rngs_alone(monkeypatch):
    """CutMix/MixUp draw from the global RNG and dropout from CUDA's, which the checkpoint saves:
    the pipeline must move neither."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    aug = gpu_pipeline.DeviceAugment("cpu", 16, 0.25, True)
    before = torch.get_rng_state()
    aug.crop(torch.zeros(3, 40, 40, dtype=torch.uint8), 123)
    assert torch.equal(torch.get_rng_state(), before)
    assert reseeded == []


def test_workers_send_bytes_for_rgb_jpegs_and_cpu_crops_for_the_rest(tmp_path):
    base = photo()
    files = {
        "rgb.jpg": jpeg(base),
        "gray.jpg": jpeg(base.convert("L")),
        "cmyk.jpg": jpeg(base.convert("CMYK")),
        "png.png": (lambda b: (base.save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()),
    }
    paths = []
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        paths.append(str(tmp_path / name))
    samples = samples_of(paths, np.array([0, 1, 0, 1]))
    tf = data.train_transform(32, 0.25, True)
    dataset = gpu_pipeline.EncodedDataset(samples, tf)
    cpu = data.TransformedDataset(samples, tf)
    for i, name in enumerate(files):
        payload, encoded, target, seed = dataset[(i, 1000 + i)]
        assert target == samples.targets[i] and seed == 1000 + i
        if name == "rgb.jpg":
            assert encoded and bytes(payload.numpy()) == files[name]
        else:  # the CPU pipeline's own result, under the same seed
            assert not encoded, name
            assert torch.equal(payload, cpu[(i, 1000 + i)][0]), name


def test_truncated_and_corrupt_files_fail_as_on_the_cpu_path(tmp_path):
    whole = jpeg(photo())
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    samples = samples_of([str(tmp_path / "cut.jpg")], np.array([0]))
    tf = data.train_transform(16, 0.25, False)
    with pytest.raises(OSError) as cpu_error:
        data.TransformedDataset(samples, tf)[(0, 1)]
    with pytest.raises(OSError) as gpu_error:
        gpu_pipeline.EncodedDataset(samples, tf)[(0, 1)]
    assert str(gpu_error.value) == str(cpu_error.value)
    # garbage between a valid header and the end marker: nvjpeg (here: libjpeg) refuses it and the
    # CPU decode of that image raises Pillow's error, as the CPU path's worker would
    broken = whole[:600] + bytes(2000) + b"\xff\xd9"
    aug = gpu_pipeline.DeviceAugment("cpu", 16, 0.25, False)
    with pytest.raises(OSError):
        aug([torch.frombuffer(bytearray(broken), dtype=torch.uint8)], [True], torch.tensor([1]))


def batch_of(items, seeds):
    return gpu_pipeline.collate([(torch.frombuffer(bytearray(b), dtype=torch.uint8), True, 0, s)
                                 for b, s in zip(items, seeds)])


def test_device_batch_is_close_to_the_cpu_pipeline_on_real_photos(tmp_path):
    """Decoder (libjpeg-turbo in both) and crop box are the same; only the resampling differs
    (Pillow's against torch's antialiased bilinear)."""
    raws = [jpeg(photo(i, (160 + 20 * i, 120 + 10 * i))) for i in range(6)]
    samples = samples_of(raws, np.zeros(6, dtype=np.int64))
    cpu = data.TransformedDataset(samples, data.train_transform(48, 0.25, True))
    payloads, encoded, _, seeds = batch_of(raws, list(range(50, 56)))
    aug = gpu_pipeline.DeviceAugment("cpu", 48, 0.25, True)
    got = aug(payloads, encoded, seeds)
    want = torch.stack([cpu[(i, 50 + i)][0] for i in range(6)])
    assert got.shape == want.shape == (6, 3, 48, 48) and got.dtype == torch.uint8
    diff = (got.float() - want.float()).abs()
    assert diff.mean() < 1.5 and diff.max() <= 64, (diff.mean(), diff.max())
    assert aug.cpu_decoded == 0


def test_an_image_nvjpeg_refuses_is_decoded_on_the_cpu_and_counted(monkeypatch):
    raws = [jpeg(photo(i)) for i in range(3)]
    payloads, encoded, _, seeds = batch_of(raws, [7, 8, 9])
    aug = gpu_pipeline.DeviceAugment("cpu", 32, 0.25, True)
    expected = aug(payloads, encoded, seeds)
    real = gpu_pipeline.gpu_image.decode_jpegs
    monkeypatch.setattr(gpu_pipeline.gpu_image, "decode_jpegs",
                        lambda datas, device: [None if i == 1 else t for i, t in enumerate(real(datas, device))])
    aug = gpu_pipeline.DeviceAugment("cpu", 32, 0.25, True)
    got = aug(payloads, encoded, seeds)
    assert aug.cpu_decoded == 1
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])
    assert (got[1].float() - expected[1].float()).abs().mean() < 2  # Pillow's decode of the same file


def test_choose(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    jpegs = []
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(photo(i)))
        jpegs.append(str(tmp_path / f"{i}.jpg"))
    arrays = readers.Samples(np.zeros((4, 8, 8), dtype=np.uint8), np.zeros(4, dtype=np.int64), ["a"])
    assert gpu_pipeline.choose("cpu", cpu, samples_of(jpegs)) == ("cpu", "--data-pipeline cpu")
    assert gpu_pipeline.choose("auto", cpu, samples_of(jpegs)) == ("cpu", "auto: no CUDA device (cpu)")
    with pytest.raises(UsageError, match="needs a CUDA device"):
        gpu_pipeline.choose("gpu", cpu, samples_of(jpegs))

    monkeypatch.setattr(gpu_pipeline, "cuda_device", lambda device: True)
    assert gpu_pipeline.choose("auto", cpu, samples_of(jpegs))[0] == "gpu"
    assert gpu_pipeline.choose("auto", cpu, arrays)[0] == "cpu"
    with pytest.raises(UsageError, match="pixel arrays"):
        gpu_pipeline.choose("gpu", cpu, arrays)
    pngs = []
    for i in range(4):
        photo(i).save(tmp_path / f"{i}.png")
        pngs.append(str(tmp_path / f"{i}.png"))
    assert gpu_pipeline.choose("auto", cpu, samples_of(pngs)) == \
        ("cpu", "auto: only 0 of the first 4 files are RGB JPEGs for nvjpeg")
    assert gpu_pipeline.choose("gpu", cpu, samples_of(pngs))[0] == "gpu"  # asked for: PNGs fall back


class FakeStreams:
    """Records when batches are prepared (inside the side stream) and handed over."""

    def __init__(self):
        self.events, self.inside = [], False

    def __call__(self):
        streams = self

        class Context:
            def __enter__(self):
                streams.inside = True

            def __exit__(self, *exc):
                streams.inside = False
        return Context()

    def hand_over(self, tensors):
        self.events.append(("hand_over", int(tensors[1][0])))


def test_the_next_batch_is_prepared_on_the_side_stream_before_the_step():
    raws = [jpeg(photo(i)) for i in range(3)]
    batches = [(*batch_of(raws[:2], [1, 2])[:2], torch.tensor([k, k]), torch.tensor([1, 2])) for k in range(3)]
    streams = FakeStreams()
    aug = gpu_pipeline.DeviceAugment("cpu", 16, 0.25, True)
    real_call = aug.__call__

    class Recording(gpu_pipeline.DeviceAugment):
        def __call__(self, payloads, encoded, seeds):
            assert streams.inside, "device work outside the side stream"
            streams.events.append(("prepare",))
            return real_call(payloads, encoded, seeds)
    aug.__class__ = Recording
    loader = gpu_pipeline.DeviceLoader(batches, aug, streams=streams)
    for images, targets in loader:
        k = int(targets[0])
        streams.events.append(("step", k))
        assert images.shape == (2, 3, 16, 16)
    assert streams.events == [("prepare",), ("hand_over", 0), ("prepare",), ("step", 0),
                              ("hand_over", 1), ("prepare",), ("step", 1),
                              ("hand_over", 2), ("step", 2)]


def test_side_stream_hand_over_waits_and_records(monkeypatch):
    calls = []

    class Stream:
        def __init__(self, device=None, name="side"):
            self.device, self.name = device, name

        def wait_stream(self, other):
            calls.append((self.name, "wait_stream", other.name))

    class Tensor:
        def __init__(self, name):
            self.name = name

        def record_stream(self, stream):
            calls.append((self.name, "record_stream", stream.name))

    main = Stream(name="main")
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    side = gpu_pipeline.SideStream(torch.device("cuda", 0))
    side.hand_over([Tensor("images"), Tensor("targets")])
    assert calls == [("main", "wait_stream", "side"), ("images", "record_stream", "main"),
                     ("targets", "record_stream", "main")]
    assert gpu_pipeline.SideStream(torch.device("cpu")).stream is None

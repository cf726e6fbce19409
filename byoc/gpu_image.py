"""Image decoding on a device, shared by the trainer's GPU pipeline and the serving handlers.

On CUDA, ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with
nvjpeg in one call. The same call runs on the CPU (libjpeg-turbo), which is how the tests
run this code without a GPU.

What goes to nvjpeg is decided from the file's header alone (Pillow reads the markers, not
the pixels): a complete baseline or progressive JPEG with three colour components. PNG,
CMYK/YCCK and grayscale JPEGs, and JPEGs without their end marker (truncated), are left
to the caller's CPU path, so they behave exactly as they do there. A JPEG that passes the
header check but that nvjpeg still refuses comes back as ``None``, also for the CPU path.

torchvision 0.29 (the images' pin) deprecates its image decoders in favour of TorchCodec
(0.16+, "largely backward-compatible"); they still work, and torchvision 0.26 on the GPU
test machine has no TorchCodec counterpart. When they go, ``decode_jpegs`` is the one
place to switch.
"""
from __future__ import annotations

import io
import logging

import torch

log = logging.getLogger(__name__)

JPEG_EOI = b"\xff\xd9"


def nvjpeg_candidate(data: bytes, header=None) -> bool:
    """Is ``data`` a JPEG to decode with nvjpeg (see module doc)? ``header``: the
    ``PIL.Image.open`` of ``data`` when the caller has it (nothing is decoded either way)."""
    if data[:2] != b"\xff\xd8" or not data.rstrip(b"\x00\r\n ").endswith(JPEG_EOI):
        return False
    if header is None:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                return img.mode == "RGB"
        except Exception:  # not a JPEG Pillow can read: the CPU path says why
            return False
    return header.format == "JPEG" and header.mode == "RGB"


def decode_jpegs(datas: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | None]:
    """uint8 ``[3, H, W]`` images on ``device``, one per encoded JPEG (1-D uint8 CPU tensors).

    One batched call first; if it raises (one bad file fails the whole batch), each image
    is decoded alone, and an image that still fails is ``None``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as exc:
        log.info("batch JPEG decode of %d images failed (%s); decoding them one by one", len(datas),
                 str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    out = []
    for data in datas:
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out

"""Writes the demo's bundled sample data (samples/) from real photos.

The photos are scikit-image's bundled texture photographs of brick, grass and
gravel (512x512, grayscale; public domain / CC0, see skimage.data). Training
patches come from the left three quarters of each photo; the demo's query
photos from the right quarter, which training never sees.

    .venv/bin/pip install scikit-image==0.26.0
    .venv/bin/python scripts/make_sample_data.py      # rewrites samples/
"""
import shutil
from pathlib import Path

from PIL import Image
from skimage import data

CLASSES = ("brick", "grass", "gravel")
PATCH = 128
STRIDE = 48
ROOT = Path(__file__).resolve().parents[1] / "samples"


def main():
    shutil.rmtree(ROOT / "textures", ignore_errors=True)
    (ROOT / "photos").mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        photo = Image.fromarray(getattr(data, name)())
        width, height = photo.size
        train_width = width * 3 // 4
        out = ROOT / "textures" / name
        out.mkdir(parents=True)
        count = 0
        for top in range(0, height - PATCH + 1, STRIDE):
            for left in range(0, train_width - PATCH + 1, STRIDE):
                photo.crop((left, top, left + PATCH, top + PATCH)).save(out / f"{count:03d}.png", optimize=True)
                count += 1
        query = photo.crop((train_width, 0, width, width - train_width)).convert("RGB")
        query.save(ROOT / "photos" / f"{name}.jpg", quality=90)
        print(f"{name}: {count} training patches, query photo {query.size}")


if __name__ == "__main__":
    main()

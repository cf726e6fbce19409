"""Parquet channels (Bengali.AI and Hugging Face datasets style) for the built-in trainer.

A channel holds one or more ``.parquet`` files with, per row, either

- an image-bytes column: encoded PNG/JPEG bytes, or the Hugging Face ``datasets`` struct
  ``{"bytes": ..., "path": ...}``, or
- flattened pixels: uint8 columns named ``"0" .. "N-1"`` (Bengali.AI: 137 x 236 grayscale),
  the image height and width given by ``--pixel-shape`` (square when left out),

and the labels either as columns of the same files, or (Bengali's layout) in a CSV file of the
channel joined on ``--id-column``. Rows without a label (Bengali's test files sit in the same
folder) are skipped and counted in the log.

Memory: files are read one row group at a time and only the columns needed. Encoded images stay
encoded (decoded per sample by the loader workers); pixel rows are copied into one preallocated
uint8 array, so the peak is the decoded dataset plus one row group, never a pandas frame of
32,000 columns. Workers share that array copy-on-write.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import UsageError

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


@dataclass(frozen=True)
class ParquetOptions:
    label_columns: tuple[str, ...] = ("label",)
    image_column: str | None = None  # None: detect (the one binary/struct column, else pixel columns)
    id_column: str = "image_id"
    pixel_shape: tuple[int, int] | None = None
    labels_csv: str | None = None  # None: the only .csv in the channel, if labels are not in the parquet


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES)
                  and not p.name.startswith("."))


def _is_bytes_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _pixel_columns(names: list[str]) -> list[str]:
    """The columns named 0, 1, ..., N-1 (all of them, in numeric order)."""
    digits = sorted((int(n), n) for n in names if n.isdigit())
    if not digits or [i for i, _ in digits] != list(range(len(digits))):
        return []
    return [n for _, n in digits]


def _read_labels_csv(path: Path, id_column: str, label_columns: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (id_column, *label_columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path}: no column(s) {missing} (it has {reader.fieldnames[:12] if reader.fieldnames else []}); "
                             "set --id-column / --label-columns")
        return {row[id_column]: tuple(row[c] for c in label_columns) for row in reader}


def _class_order(values) -> list[str]:
    """Class names: numeric order when every value is an integer (Bengali's 0..167), else sorted text."""
    unique = set(values)
    try:
        return [str(v) for v in sorted(unique, key=lambda v: int(v))]
    except (TypeError, ValueError):
        return sorted(str(v) for v in unique)


def _to_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def read_parquet(root: Path, opts: ParquetOptions):
    """(images, label strings [N, heads], origin): images a list of encoded bytes or a uint8
    [N, H, W] array. Raises UsageError with the reason for anything unusable."""
    import pyarrow.parquet as pq

    files = parquet_files(root)
    if not files:
        raise UsageError(f"{root}: no .parquet files")
    schema = pq.ParquetFile(files[0]).schema_arrow
    names = schema.names

    # where the labels come from
    in_parquet = all(c in names for c in opts.label_columns)
    labels_by_id = None
    if not in_parquet:
        csvs = sorted(p for p in root.rglob("*.csv") if p.is_file())
        if opts.labels_csv:
            csvs = [p for p in csvs if p.name == opts.labels_csv]
        if len(csvs) != 1:
            raise UsageError(f"{files[0].name}: label column(s) {list(opts.label_columns)} are not in the parquet "
                             f"(columns: {names[:8]}{' ...' if len(names) > 8 else ''}) and "
                             f"{'--labels-csv ' + opts.labels_csv + ' is not' if opts.labels_csv else 'no single .csv is'}"
                             f" in the channel to join on --id-column (found {[p.name for p in csvs]})")
        if opts.id_column not in names:
            raise UsageError(f"{files[0].name}: no id column {opts.id_column!r} to join the labels of "
                             f"{csvs[0].name} on (set --id-column)")
        labels_by_id = _read_labels_csv(csvs[0], opts.id_column, opts.label_columns)

    # where the image comes from
    if opts.image_column:
        if opts.image_column not in names:
            raise UsageError(f"{files[0].name}: no image column {opts.image_column!r}")
        if not _is_bytes_type(schema.field(opts.image_column).type):
            raise UsageError(f"--image-column {opts.image_column}: expected binary or a {{bytes, path}} struct, "
                             f"got {schema.field(opts.image_column).type}")
        image_column, pixels = opts.image_column, []
    else:
        candidates = [f.name for f in schema if _is_bytes_type(f.type)]
        pixels = _pixel_columns(names) if len(candidates) != 1 else []
        if len(candidates) > 1:
            raise UsageError(f"{files[0].name}: several image-bytes columns {candidates}; set --image-column")
        if not candidates and not pixels:
            raise UsageError(f"{files[0].name}: neither an image-bytes column nor pixel columns '0'..'N-1'")
        image_column = candidates[0] if candidates else None
    shape = None
    if pixels:
        shape = opts.pixel_shape
        if shape is None:
            side = int(round(len(pixels) ** 0.5))
            if side * side != len(pixels):
                raise UsageError(f"{len(pixels)} pixel columns are not a square image: set --pixel-shape HEIGHT,WIDTH")
            shape = (side, side)
        if shape[0] * shape[1] != len(pixels):
            raise UsageError(f"--pixel-shape {shape[0]},{shape[1]} needs {shape[0] * shape[1]} pixel columns, "
                             f"the parquet has {len(pixels)}")

    # first pass: row counts and labels (small columns only), so pixel rows go straight into one array
    label_rows, keep_masks, skipped = [], [], 0
    for path in files:
        pf = pq.ParquetFile(path)
        missing = [c for c in ((opts.id_column,) if labels_by_id is not None else opts.label_columns)
                   if c not in pf.schema_arrow.names]
        if missing:
            raise UsageError(f"{path.name}: no column(s) {missing}")
        for g in range(pf.num_row_groups):
            if labels_by_id is not None:
                ids = pf.read_row_group(g, columns=[opts.id_column]).column(0).to_pylist()
                rows = [labels_by_id.get(_to_str(i)) for i in ids]
            else:
                t = pf.read_row_group(g, columns=list(opts.label_columns))
                cols = [t.column(c).to_pylist() for c in opts.label_columns]
                rows = [None if any(v is None for v in r) else tuple(_to_str(v) for v in r) for r in zip(*cols)]
            keep = np.asarray([r is not None for r in rows], dtype=bool)
            skipped += int((~keep).sum())
            keep_masks.append(keep)
            label_rows += [r for r in rows if r is not None]
    if not label_rows:
        raise UsageError(f"{root}: no labelled rows in {len(files)} parquet file(s)")

    # second pass: the images of the labelled rows
    if pixels:
        images = np.empty((len(label_rows), *shape), dtype=np.uint8)
    else:
        images = []
    pos, masks = 0, iter(keep_masks)
    for path in files:
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            keep = next(masks)
            if not keep.any():
                continue
            if pixels:
                t = pf.read_row_group(g, columns=pixels)
                block = np.empty((t.num_rows, len(pixels)), dtype=np.uint8)
                for j in range(len(pixels)):
                    block[:, j] = t.column(j).to_numpy()
                block = block[keep]
                images[pos:pos + len(block)] = block.reshape(len(block), *shape)
                pos += len(block)
                del t, block
            else:
                col = pf.read_row_group(g, columns=[image_column]).column(0)
                values = col.to_pylist()
                for v, k in zip(values, keep):
                    if not k:
                        continue
                    raw = v.get("bytes") if isinstance(v, dict) else v
                    if raw is None:
                        raise UsageError(f"{path.name}: a row of {image_column!r} has no image bytes "
                                         "(only a path? the images must be embedded)")
                    images.append(bytes(raw))
    source = (f"pixels {shape[0]}x{shape[1]}" if pixels else f"image bytes in {image_column!r}")
    labels_from = "parquet columns" if labels_by_id is None else "the CSV joined on " + opts.id_column
    note = f"{len(files)} parquet file(s), {source}, labels from {labels_from}"
    if skipped:
        note += f", {skipped} unlabelled rows skipped"
    return images, np.asarray(label_rows, dtype=object).reshape(len(label_rows), len(opts.label_columns)), note


def encode_labels(label_strings: np.ndarray, classes: list[list[str]] | None = None):
    """Label strings [N, heads] -> (int64 targets [N, heads], classes per head).

    With ``classes`` (the training set's), a value not among them is an error."""
    heads = label_strings.shape[1]
    if classes is None:
        classes = [_class_order(label_strings[:, h]) for h in range(heads)]
    targets = np.empty(label_strings.shape, dtype=np.int64)
    for h in range(heads):
        index = {c: i for i, c in enumerate(classes[h])}
        try:
            targets[:, h] = [index[v] for v in label_strings[:, h]]
        except KeyError as e:
            raise UsageError(f"validation label {e.args[0]!r} (head {h}) is not in the training data") from None
    return targets, classes

"""Bench only, run inside the litserve.Dockerfile build: what pip's install report says it
added (name, version) and the newest date inside each wheel file it installed from (its build
date: pip shows no release dates). Wheels built reproducibly carry a fixed stamp instead of a
date (hatchling 2020-02-02, pdm-backend 2016-01-01, maturin 1980-01-01): written as "no date"."""
import json
import pathlib
import sys
import zipfile

FIXED_STAMPS = {"1980-01-01", "2016-01-01", "2020-02-02"}

report, wheels, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
lines = []
for item in json.load(open(report))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    wheel = wheels / item["download_info"]["url"].rsplit("/", 1)[-1]
    built = "?"
    if wheel.suffix == ".whl" and wheel.exists():
        with zipfile.ZipFile(wheel) as z:
            built = max("%04d-%02d-%02d" % i.date_time[:3] for i in z.infolist())
        if built in FIXED_STAMPS:
            built = f"no date (fixed stamp {built})"
    lines.append(f"{name} {version} {built}")
out.write_text("\n".join(lines) + "\n")

"""Imports a package that only requirements.txt brings, and records which version came."""
import json
import os
from importlib.metadata import version

import tabulate

print(tabulate.tabulate([["installed from requirements.txt", version("tabulate")]]), flush=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "installed.json"), "w") as f:
    json.dump({"tabulate": version("tabulate")}, f)

"""Accuracy of the model on the test set, written as DVC metrics."""

import csv
import json
import math
import sys
import time
from pathlib import Path

model = json.loads(Path(sys.argv[1]).read_text())
prepared, out = Path(sys.argv[2]), Path(sys.argv[3])
time.sleep(1)


def log_likelihood(row: dict, species: str) -> float:
    total = 0.0
    for column, stats in model["features"].items():
        s = stats[species]
        sd = s["stdev"] + model["smoothing"]
        total += -math.log(sd) - (float(row[column]) - s["mean"]) ** 2 / (2 * sd * sd)
    return total


with open(prepared / "test.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
classes = sorted(next(iter(model["features"].values())))
hits = sum(max(classes, key=lambda c: log_likelihood(r, c)) == r["species"] for r in rows)
out.write_text(json.dumps({"accuracy": round(hits / len(rows), 4), "n": len(rows)}) + "\n")
print(f"accuracy {hits}/{len(rows)}")

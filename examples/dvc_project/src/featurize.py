"""Per-class mean and spread of one measurement: one feature file per measurement."""

import csv
import json
import statistics
import sys
import time
from pathlib import Path

prepared, column, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
time.sleep(1)
with open(prepared / "train.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
by_class: dict[str, list[float]] = {}
for row in rows:
    by_class.setdefault(row["species"], []).append(float(row[column]))
stats = {k: {"mean": statistics.mean(v), "stdev": statistics.stdev(v)} for k, v in by_class.items()}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
print(f"{column}: {len(stats)} classes")

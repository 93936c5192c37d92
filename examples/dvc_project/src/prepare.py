"""Split the raw measurements into a train and a test set (stdlib only)."""

import csv
import random
import sys
import time
from pathlib import Path

raw, out, test_fraction, seed = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
time.sleep(1)  # stand-in for real work, so parallelism is visible
with open(raw, newline="") as fh:
    rows = list(csv.DictReader(fh))
random.Random(seed).shuffle(rows)
cut = int(len(rows) * (1 - test_fraction))
out.mkdir(parents=True, exist_ok=True)
for name, part in (("train.csv", rows[:cut]), ("test.csv", rows[cut:])):
    with open(out / name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(part)
print(f"prepared {cut} train and {len(rows) - cut} test rows")

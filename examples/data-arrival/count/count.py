"""Count the data rows of a CSV file; write the count to the output folder and as a metric."""

import argparse
import json
import os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--file", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

lines = Path(args.file).read_text().splitlines()
rows = max(len(lines) - 1, 0)  # the first line is the header
Path(args.out, "summary.json").write_text(json.dumps({"file": args.file, "rows": rows}))
with open(os.environ["SLUICE_METRICS"], "a") as metrics:
    metrics.write(json.dumps({"name": "rows", "value": rows}) + "\n")
print(f"{args.file}: {rows} rows")

"""Score one partition of the day's customer files (given as arguments) with a (deliberately tiny) model."""

import argparse
import csv
import json
import os
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("files", nargs="+", help="the partition's CSV files")
args = parser.parse_args()

scores = []
for path in args.files:
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            spend = float(row.get("spend") or 0)
            scores.append({"customer": row["customer"], "score": round(min(1.0, spend / 1000), 3)})
out = pathlib.Path(args.out)  # this partition's part: runs/<run>/score/scores/part-0000N
out.mkdir(parents=True, exist_ok=True)
(out / "scores.json").write_text(json.dumps(scores))
device = os.environ.get("CUDA_VISIBLE_DEVICES")  # set by the agent to the GPUs reserved for the step
names = ", ".join(pathlib.Path(path).name for path in args.files)
on = f"GPU {device}" if device else "CPU"
print(f"scored {len(scores)} customers ({names}) with model {args.model} on {on}")

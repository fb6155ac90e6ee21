"""Gather every partition's scores (the parts under score's output directory) into one report."""

import argparse
import json
import os
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--date", required=True)
parser.add_argument("--in", dest="source", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

parts = sorted(path for path in pathlib.Path(args.source).iterdir() if path.name.startswith("part-"))
scores = [score for part in parts for score in json.loads((part / "scores.json").read_text())]
scores.sort(key=lambda score: score["customer"])
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps({"date": args.date, "scores": scores}))
with open(os.environ["SLUICE_METRICS"], "a") as metrics:
    metrics.write(json.dumps({"name": "customers_scored", "value": len(scores)}) + "\n")
print(f"reported {len(scores)} customers from {len(parts)} parts for {args.date}")

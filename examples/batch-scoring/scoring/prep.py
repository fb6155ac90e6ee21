"""Turn the day's raw customer CSV files into one feature file."""

import argparse
import csv
import json
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--date", required=True)
parser.add_argument("--in", dest="source", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

rows = []
for path in sorted(pathlib.Path(args.source).glob("*.csv")):
    with path.open(newline="") as handle:
        rows.extend(csv.DictReader(handle))
features = [{"customer": row["customer"], "spend": float(row.get("spend") or 0)} for row in rows]
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "features.json").write_text(json.dumps({"date": args.date, "features": features}))
print(f"prepared {len(features)} customers for {args.date}")

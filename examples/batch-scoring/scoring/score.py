"""Score prepared customer features with a (deliberately tiny) model."""

import argparse
import json
import os
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--in", dest="source", required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

data = json.loads((pathlib.Path(args.source) / "features.json").read_text())
scores = [
    {"customer": f["customer"], "score": round(min(1.0, f["spend"] / 1000), 3)} for f in data["features"]
]
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "scores.json").write_text(json.dumps(scores))
with open(os.environ["SLUICE_METRICS"], "a") as metrics:
    metrics.write(json.dumps({"name": "customers_scored", "value": len(scores)}) + "\n")
device = os.environ.get("CUDA_VISIBLE_DEVICES")  # set by the agent to the GPUs reserved for the step
print(f"scored {len(scores)} customers with model {args.model} on {f'GPU {device}' if device else 'CPU'}")

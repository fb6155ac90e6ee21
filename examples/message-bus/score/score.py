"""A stand-in scorer: a stable score per customer, written to the output folder."""

import argparse
import hashlib
import json
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--customer", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

score = int(hashlib.sha256(args.customer.encode()).hexdigest()[:4], 16) / 0xFFFF
Path(args.out, "score.json").write_text(json.dumps({"customer": args.customer, "score": round(score, 3)}))
print(f"{args.customer}: {score:.3f}")

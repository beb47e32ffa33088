"""How long a lab takes to come up and go down.

Prints JSON: per run the seconds for `up` (ZooKeeper, S3, primary and replicas ready and
streaming) and `down` (everything stopped, directory removed), and their medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pgwarden.lab import Lab, LabSpec, scratch_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--zk-nodes", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    ups, downs = [], []
    for _ in range(args.runs):
        spec = LabSpec(zookeeper_nodes=args.zk_nodes, s3=True, postgres_nodes=args.nodes)
        start = time.monotonic()
        lab = Lab.create(scratch_directory("bench"), spec)
        ups.append(round(time.monotonic() - start, 3))
        start = time.monotonic()
        lab.down()
        downs.append(round(time.monotonic() - start, 3))
    result = {
        "benchmark": "lab_up",
        "nodes": args.nodes,
        "zookeeper_nodes": args.zk_nodes,
        "up_s": ups,
        "down_s": downs,
        "median_up_s": statistics.median(ups),
        "median_down_s": statistics.median(downs),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

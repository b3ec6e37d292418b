#!/usr/bin/env python3
"""A third routing dataset for robustness checks: RouterDC's seven-model outcomes as
canonical routing JSONL.

RouterDC (Chen et al., NeurIPS 2024; github.com/shuhao02/RouterDC) publishes, under
`datasets/split2_model7/`, the outcomes of seven open 7B/8B models (Mistral-7B,
MetaMath-Mistral-7B, Chinese-Mistral-7B, zephyr-7b-beta, dolphin-2.6-mistral-7b,
Meta-Llama-3-8B, dolphin-2.9-llama3-8b) on MMLU, CMMLU, C-Eval, ARC, GSM8K, MATH
pre-algebra, HumanEval, MBPP and a JavaScript set. It differs from the shared files in
what matters to a router: fractional scores (option probabilities, pass rates over
samples), a pool of similar models, Chinese prompts, and no `answer` fields.

Costs are synthetic: tokens (characters / 4 in, an assumed output length per task) times
an assumed hosting price per model (PRICES). `split` is `test` for one id in five, by a
hash of the id, like the shared files. Usage:

    python3 scripts/routerdc_to_canonical.py PATH/TO/RouterDC-git-dir OUT.jsonl

where the first argument is a git directory of the repository (a clone, or the snapshot
the `fetch` tool brings). Nothing here is committed data.
"""
import hashlib, json, subprocess, sys

REPO = sys.argv[1]
OUT = sys.argv[2]
PRICES = {  # USD per million tokens (assumed hosting prices; input = output)
    "mistralai/Mistral-7B-v0.1": 0.10,
    "meta-math/MetaMath-Mistral-7B": 0.12,
    "itpossible/Chinese-Mistral-7B-v0.1": 0.08,
    "HuggingFaceH4/zephyr-7b-beta": 0.10,
    "cognitivecomputations/dolphin-2.6-mistral-7b": 0.15,
    "meta-llama/Meta-Llama-3-8B": 0.20,
    "cognitivecomputations/dolphin-2.9-llama3-8b": 0.25,
}
OUT_TOKENS = {"gsm8k": 180, "MATH_prealgebra": 200, "humaneval": 150, "mbpp": 150, "javascript": 150}
files = subprocess.check_output(["git", "-C", REPO, "ls-tree", "--name-only", "HEAD", "datasets/split2_model7/"]).decode().split()
n = 0
with open(OUT, "w") as out:
    for f in sorted(files):
        name = f.rsplit("/", 1)[1][:-5]
        task = name.replace("_test", "").replace("_train", "").replace("-test", "").replace("-train", "")
        rows = json.loads(subprocess.check_output(["git", "-C", REPO, "show", "HEAD:" + f]))
        for i, r in enumerate(rows):
            rid = f"{task}.{name}.{i}"
            split = "test" if int(hashlib.sha256(rid.encode()).hexdigest(), 16) % 5 == 0 else "train"
            tin = max(1, len(r["question"]) // 4)
            tout = OUT_TOKENS.get(task, 1)
            models = {}
            for m, s in r["scores"].items():
                p = PRICES[m]
                models[m] = {"score": float(min(1.0, max(0.0, s))), "cost_usd": (tin + tout) * p / 1e6,
                             "input_tokens": tin, "output_tokens": tout}
            out.write(json.dumps({"id": rid, "task": task, "prompt": r["question"], "split": split, "models": models}) + "\n")
            n += 1
print(n, "rows")

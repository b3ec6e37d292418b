#!/usr/bin/env python3
"""Share of CPU samples per gateway stage, from `perf script` output (stdin).

    perf record -F 2999 -g --call-graph dwarf,16384 -p "$(pgrep -f 'routewise serve')" -- sleep 8
    perf script | python3 bench/perf_categories.py
"""
import sys, re, collections
# `perf script` -> share of samples per category; a sample belongs to the first category
# (in this priority order) that any frame of its stack matches. "[kernel]": the sample was
# taken in the kernel (syscalls, scheduling) on behalf of that category.
CATS = [
 ("decision log", r"decision_log::|Predictions|tracing_subscriber::fmt|tracing_appender"),
 ("routing: featurize", r"routewise_features::"),
 ("routing: kNN + rank + bandit", r"routewise_router::|routewise_online::|route::route"),
 ("request parse", r"routewise_gateway::request::"),
 ("upstream body encode", r"upstream_body"),
 ("key redaction", r"redact::"),
 ("trace ids", r"routewise_gateway::trace::|new_decision_id|uuid::"),
 ("metrics", r"prometheus_client|routewise_gateway::metrics"),
 ("upstream client (hyper client + its connection; reqwest before issue 18)", r"reqwest::|hyper_util::client|dispatch::Client|role::Client|hyper::client"),
 ("tracing spans", r"tracing::span|tracing_core::|sharded_slab|tracing_subscriber::registry"),
 ("response headers / axum", r"axum::|routewise_gateway::http::|with_headers"),
 ("server connection (hyper server, TrackedIo, watchdog)", r"routewise_gateway::server::|hyper::proto::h1|hyper::server"),
 ("tokio scheduler / timers / idle", r"tokio::"),
]
cats=[(n,re.compile(p)) for n,p in CATS]
counts=collections.Counter(); total=0
stack=[]; comm=None
def flush():
    global total
    if not stack: return
    total+=1
    name="other"
    for n,rx in cats:
        if any(rx.search(fr) for fr in stack): name=n; break
    if "kernel.kallsyms" in stack[0]: name+=" [kernel]"
    if comm and comm.startswith("routewise-log"): name="log writer thread: "+name
    counts[name]+=1
for line in sys.stdin:
    if not line.strip():
        flush(); stack=[]; comm=None; continue
    if not line.startswith((" ","\t")):
        comm=line.split()[0]; continue
    stack.append(line.strip())
flush()
for n,c in counts.most_common(): print(f"{100*c/total:5.1f}%  {n}")
print("samples", total)

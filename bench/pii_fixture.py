#!/usr/bin/env python3
"""Derive tests/data/pii_external.jsonl from presidio-evaluator's synthetic dataset.

Source: PyPI sdist presidio-evaluator==0.3.2 (MIT), file
presidio_evaluator-0.3.2/data/synth_dataset_v2.json (1500 labelled sentences).

Usage:
  pip download --no-deps --no-binary :all: presidio-evaluator==0.3.2 -d /tmp/pii/sdist
  tar xzf /tmp/pii/sdist/presidio_evaluator-0.3.2.tar.gz -C /tmp/pii/sdist
  python3 bench/pii_fixture.py /tmp/pii/sdist/presidio_evaluator-0.3.2/data/synth_dataset_v2.json \
      crates/routewise-signals/tests/data/pii_external.jsonl
"""
import collections
import json
import sys

# presidio label -> routewise type; anything else becomes "other:<label>"
TYPE_MAP = {
    "EMAIL_ADDRESS": "email",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
    "PHONE_NUMBER": "phone",
    "US_SSN": "ssn",
    "IP_ADDRESS": "ip",
}
MAX_BYTES = 900 * 1024


def convert(rec):
    text = rec["full_text"]
    ents = []
    for s in sorted(rec["spans"], key=lambda s: (s["start_position"], s["end_position"])):
        cs, ce = s["start_position"], s["end_position"]
        assert text[cs:ce] == s["entity_value"], (text, s)
        # char offsets -> UTF-8 byte offsets
        bs = len(text[:cs].encode("utf-8"))
        be = bs + len(text[cs:ce].encode("utf-8"))
        label = s["entity_type"]
        ents.append({
            "type": TYPE_MAP.get(label, "other:" + label),
            "start": bs,
            "end": be,
            "value": s["entity_value"],
        })
    b = text.encode("utf-8")
    for e in ents:
        assert b[e["start"]:e["end"]].decode("utf-8") == e["value"]
    return {"text": text, "entities": ents}


def main(src, dst):
    data = json.load(open(src, encoding="utf-8"))
    rows = [convert(r) for r in data]  # keep all, in source order
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    size = sum(len(l.encode("utf-8")) for l in lines)
    assert size < MAX_BYTES, size  # whole corpus fits; no subsampling needed
    with open(dst, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    ent_counts = collections.Counter(e["type"] for r in rows for e in r["entities"])
    sent_counts = collections.Counter(
        t for r in rows for t in {e["type"] for e in r["entities"]})
    ours = set(TYPE_MAP.values())
    print(f"rows={len(rows)} bytes={size}")
    print("rows with >=1 of our types:",
          sum(1 for r in rows if any(e["type"] in ours for e in r["entities"])))
    print("rows with none of our types:",
          sum(1 for r in rows if not any(e["type"] in ours for e in r["entities"])))
    for t, n in sorted(ent_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {t:28s} entities={n:4d} rows={sent_counts[t]:4d}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

#!/usr/bin/env python3
"""Parses Prometheus' text exposition format from standard input with the reference Python
client's parser (prometheus_client) and prints it as JSON, for tests/metrics.rs:
[{"name": FAMILY, "type": TYPE, "help": HELP,
  "samples": [{"name": NAME, "labels": {...}, "value": FLOAT}, ...]}, ...]
A document the parser refuses makes it exit non-zero with the parser's error."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def number(v):
    # JSON has no infinities or NaN: spell them as strings.
    return v if math.isfinite(v) else str(v)


families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": f.name,
        "type": f.type,
        "help": f.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": number(s.value)} for s in f.samples],
    })
json.dump(families, sys.stdout)

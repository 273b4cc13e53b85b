"""Every metric and label that a dashboard or alert rule names is one the gateway serves.
Usage: promql_names.py METRICS_TEXT FILE...  (METRICS_TEXT: what /metrics answered;
FILE: a Grafana dashboard .json or a Prometheus rules .yml)
A label counts as served when some metric named in the same expression carries it (or
`le`, for a histogram's buckets). `up` with `job` and `instance` is Prometheus' own."""
import json
import re
import sys

import yaml
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS_OWN = {"up": {"job", "instance"}}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "and", "or", "unless", "offset", "inf", "nan"}

served = {}  # sample name -> label names
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        served.setdefault(s.name, set()).update(s.labels)
served.update(PROMETHEUS_OWN)


def expressions(path):
    if path.endswith(".json"):
        def walk(v):
            if isinstance(v, dict):
                for k, x in v.items():
                    if k in ("expr", "definition") and isinstance(x, str):
                        yield x
                    elif k == "query" and isinstance(x, str) and x != "prometheus":
                        yield x
                    else:
                        yield from walk(x)
            elif isinstance(v, list):
                for x in v:
                    yield from walk(x)
        yield from walk(json.load(open(path)))
    else:
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                yield rule["expr"]


def names(expr):
    """(metric names, label names) an expression uses."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges, $__rate_interval
    labels = set()
    m = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)\s*", e)
    if m:
        return {m.group(1)}, {m.group(2)}
    for g in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels.update(x.strip() for x in g.group(2).split(",") if x.strip())
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for sel in re.finditer(r"\{([^}]*)\}", e):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", sel.group(1)))
    e = re.sub(r"\{[^}]*\}", " ", e)
    metrics = set()
    for tok in re.finditer(r"[A-Za-z_:][\w:]*", e):
        rest = e[tok.end():].lstrip()
        word = tok.group(0)
        if rest.startswith("(") or word.lower() in KEYWORDS or word.startswith("$"):
            continue
        if e[max(0, tok.start() - 1)] == "$":
            continue
        metrics.add(word)
    return metrics, labels


problems = []
count = 0
for path in sys.argv[2:]:
    for expr in expressions(path):
        count += 1
        metrics, labels = names(expr)
        if not metrics:
            problems.append(f"{path}: no metric in {expr!r}")
        have = set()
        for m in metrics:
            if m not in served:
                problems.append(f"{path}: {m} is not served (in {expr.strip()!r})")
            have |= served.get(m, set())
        for label in labels - have:
            problems.append(f"{path}: label {label} is not on {sorted(metrics)} (in {expr.strip()!r})")
for p in problems:
    print("PROBLEM:", p)
print(f"{count} expressions checked")
sys.exit(1 if problems or count == 0 else 0)

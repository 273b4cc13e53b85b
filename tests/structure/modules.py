"""The import graph of src/ between top-level modules (src/X.rs or src/X/): which module
names which (`crate::X` anywhere in its files), and the cycles in that graph.
Also: the test fixtures (the fake REDCap, dev mode) are imported by no other module, so
nothing on the request path depends on them (the binary's `cli` reaches them through the
library's public paths, as any other crate would).
Usage: modules.py SRC_DIR [--dot]   Exit 1 if a cycle exists or a fixture is imported,
printing each."""
import os
import re
import sys

src = sys.argv[1]
mods = {}
for entry in sorted(os.listdir(src)):
    path = os.path.join(src, entry)
    if entry in ("lib.rs", "main.rs"):
        continue
    if entry.endswith(".rs"):
        mods[entry[:-3]] = [path]
    elif os.path.isdir(path):
        mods[entry] = [os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]

def code(text):
    """The file without comments and without its `#[cfg(test)] mod x { ... }` blocks
    (`#[cfg(all(test, ...))]` too)
    (tests are not part of the graph; what follows such a block still is)."""
    text = re.sub(r"//[^\n]*", "", text)
    while True:
        m = re.search(r"#\[cfg\((?:all\()?test\b[^\]]*\]\s*mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]

edges = {m: set() for m in mods}
for m, files in mods.items():
    for f in files:
        text = code(open(f).read())
        for used in re.findall(r"\bcrate::(\w+)", text):
            if used in mods and used != m:
                edges[m].add(used)
        # `use crate::{a, b::c}`
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            for used in re.findall(r"(?:^|,)\s*(\w+)", group):
                if used in mods and used != m:
                    edges[m].add(used)

# Strongly connected components (Tarjan).
index, low, stack, on, sccs = {}, {}, [], set(), []
def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v); on.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        visit(v)

if "--dot" in sys.argv:
    for m in sorted(edges):
        print(f"{m}: {' '.join(sorted(edges[m]))}")
cycles = [c for c in sccs if len(c) > 1]
FIXTURES = {"fake_redcap", "dev"}
leaks = sorted((m, f) for m in edges if m not in FIXTURES for f in edges[m] & FIXTURES)
for m, f in leaks:
    print(f"FIXTURE: {m} imports {f} (a test fixture; only fixtures and tests may)")
for c in cycles:
    print("CYCLE:", " <-> ".join(c))
    for m in c:
        print(f"  {m} -> {', '.join(sorted(e for e in edges[m] if e in c))}")
sys.exit(1 if cycles or leaks else 0)

#!/usr/bin/env python3
"""Module dependency graph of stickgate: circles and upward arrows.

Usage: scripts/modgraph.py [ROOT] [--no-tests] [--edges]

ROOT is a checkout (default: the repository this script sits in). The
workspace layout (core crate in ROOT/core/src, tools in ROOT/src/{demo,
drill,import}) and the older single-crate layout (everything in ROOT/src)
are both read, so one figure can be compared across the move.

An edge A -> B means a file of module A names module B through a `crate::`,
`super::` or `self::` path, in a `use` line or inline, or through a bare
path that starts with one of A's own child modules (`plan::build` in
`import/mod.rs`). Test code counts unless --no-tests is given: a test-only
circle still ties two modules together when either changes.

Printed: (a) every circle (strongly connected component of more than one
module) between top-level modules, and separately between the files inside
`store/multicast` and inside `import`; (b) every upward arrow, an edge from
a lower layer to a higher one in LAYERS below. The crate root (`lib.rs`)
composes everything and is left out.
"""

import os
import re
import sys
from collections import defaultdict

# The declared layer order, leaf first. A module may use modules to its
# left; an edge pointing right is an upward arrow. Why this order:
# - lock (the poisoned-lock policy), admin_state, client_info, client_upgrade (the upgraded client stream a tunnel relays), secret,
#   redact (how a session id appears in logs): plain values and helpers that know nothing of the balancer, so any
#   layer may name them without pulling in another.
# - tls loads certificates (and defines the `CertFiles` shape the config
#   file uses); it needs no config.
# - config turns TOML into checked values (and checks certificate and key
#   files through tls and secret); everything above reads it.
# - store remembers session -> route; it needs config values only.
# - backend owns the upstream pool, health and stats of one node; it reads
#   config and tls, never a session.
# - routing decides a backend for a request: it reads the session store
#   and the backends' state and weights, so it sits above both.
# - body is the proxy's response body: it holds an exchange with a backend
#   and checks the connection back into its pool.
# - access_log formats a finished exchange from values below it.
# - proxy is the request path and uses all of the above.
# - server accepts connections and hands requests to proxy.
# - control (the control plane: reload reconciliation, state pollers)
#   changes a running proxy; reload re-reads files and drives it.
# - admin is the operator's window over everything, including reload.
# - demo, drill, import are tools outside the core; they may use any of it.
LAYERS = [
    "lock",
    "thread_index",
    "admin_state",
    "client_info",
    "client_upgrade",
    "secret",
    "redact",
    "tls",
    "config",
    "store",
    "backend",
    "routing",
    "body",
    "access_log",
    "proxy",
    "server",
    "control",
    "reload",
    "admin",
    "demo",
    "drill",
    "import",
]

TOOLS = ("demo", "drill", "import")
FOLDERS = ("store::multicast", "import")

STRIP = re.compile(
    r"""//[^\n]*
      | /\*.*?\*/
      | b?r(?P<hashes>\#*)".*?"(?P=hashes)
      | b?"(?:\\.|[^"\\])*"
      | b?'(?:\\.|[^'\\])'
    """,
    re.S | re.X,
)

TOKENS = re.compile(
    r"""(?P<use>\buse\s+[^;]*;)
      | (?P<cfgtest>\#\[cfg\(test\)\])
      | (?P<modopen>\bmod\s+(?P<modname>\w+)\s*\{)
      | (?P<open>\{)
      | (?P<close>\})
      | (?P<path>(?<![\w:])(?:crate|super|self|\w+)(?:::(?:\w+))+)
    """,
    re.S | re.X,
)


def strip(text):
    """Blank out comments and literals, keeping newlines and offsets."""

    def blank(m):
        return "".join(c if c == "\n" else " " for c in m.group(0))

    return STRIP.sub(blank, text)


def source_files(root):
    """(crate, module path, file) for every Rust source of the two crates."""
    core = os.path.join(root, "core", "src")
    if os.path.isdir(core):
        roots = [(core, None)] + [
            (os.path.join(root, "src", t), t) for t in TOOLS
        ]
    else:
        roots = [(os.path.join(root, "src"), None)]
    out = []
    for base, tool in roots:
        for dirpath, _, names in os.walk(base):
            for n in sorted(names):
                if not n.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, n), base)
                parts = rel[:-3].split(os.sep)
                if tool is None and len(parts) == 1:
                    if parts[0] == "lib":
                        out.append(((), os.path.join(dirpath, n)))
                        continue
                    if parts[0] == "main" or parts[0].startswith("cli_"):
                        continue  # the binary, not the library
                if parts[-1] == "mod":
                    parts = parts[:-1]
                if tool:
                    parts = [tool] + parts
                out.append((tuple(parts), os.path.join(dirpath, n)))
    return out


def expand_use(tree):
    """All paths named by a use tree like `crate::{a::{b, c}, d}`."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"\bas\w+", "", tree)

    def split_top(s):
        depth, cur, items = 0, "", []
        for ch in s:
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            items.append(cur)
        return items

    def walk(prefix, s):
        i = s.find("{")
        if i < 0:
            path = prefix + [p for p in s.split("::") if p]
            return [path]
        head = [p for p in s[:i].split("::") if p]
        inner = s[i + 1 : s.rfind("}")]
        out = []
        for item in split_top(inner):
            if item == "self":
                out.append(prefix + head)
            else:
                out.extend(walk(prefix + head, item))
        return out

    return walk([], tree)


def resolve(segs, here, children):
    """Absolute module path a path points into, or None if external."""
    if not segs:
        return None
    first = segs[0]
    if first == "crate":
        return list(segs[1:])
    if first in ("super", "self"):
        cur = list(here)
        i = 0
        while i < len(segs) and segs[i] in ("super", "self"):
            if segs[i] == "super":
                if not cur:
                    return None
                cur.pop()
            i += 1
        return cur + list(segs[i:])
    if first in children:
        return list(here) + list(segs)
    return None


def scan(module, path, children, modules, tests_only):
    """Edges (target module, in test code) named in one file."""
    text = strip(open(path, encoding="utf-8").read())
    stack = []  # (inline module name or None, depth, is test)
    depth = 0
    pending_test = False
    found = set()
    for m in TOKENS.finditer(text):
        kind = m.lastgroup if m.lastgroup != "modname" else "modopen"
        inline = [s[0] for s in stack if s[0]]
        in_test = tests_only or any(s[2] for s in stack)
        here = list(module) + inline
        if kind == "cfgtest":
            pending_test = True
            continue
        if kind == "modopen":
            depth += 1
            stack.append((m.group("modname"), depth, pending_test))
            pending_test = False
            continue
        if kind == "open":
            depth += 1
            stack.append((None, depth, pending_test))
            pending_test = False
            continue
        if kind == "close":
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
            continue
        if kind == "use":
            body = m.group("use")[3:-1].strip()
            paths = expand_use(body)
        else:
            paths = [m.group("path").split("::")]
            pending_test = False
        kids = children if not inline else set()
        for segs in paths:
            target = resolve(segs, here, kids)
            if target is None:
                continue
            best = longest_module(target, modules)
            if best is not None and best != module:
                found.add((best, in_test))
    return found


def longest_module(target, modules):
    for n in range(len(target), 0, -1):
        if tuple(target[:n]) in modules:
            return tuple(target[:n])
    return None


def child_modules(path):
    text = strip(open(path, encoding="utf-8").read())
    return set(re.findall(r"\bmod\s+(\w+)\s*;", text))


def test_only_children(path):
    text = strip(open(path, encoding="utf-8").read())
    return set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text))


def build(root, with_tests):
    files = source_files(root)
    modules = {m for m, _ in files}
    test_mods = set()
    for m, p in files:
        for c in test_only_children(p):
            test_mods.add(m + (c,))
    edges = set()
    for m, p in files:
        if m == ():
            continue
        tests_only = any(m[: len(t)] == t for t in test_mods)
        if tests_only and not with_tests:
            continue
        for target, in_test in scan(m, p, child_modules(p), modules, tests_only):
            if in_test and not with_tests:
                continue
            if target == ():
                continue
            edges.add((m, target))
    return modules, edges


def sccs(nodes, edges):
    """Tarjan's strongly connected components, larger than one."""
    graph = defaultdict(set)
    for a, b in edges:
        if a != b:
            graph[a].add(b)
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(out)


def name(m):
    return "::".join(m) if m else "(root)"


def cycle_edges(comp, edges):
    members = set(comp)
    return sorted((a, b) for a, b in edges if a in members and b in members and a != b)


def print_circles(where, nodes, edges):
    """Print the circles among `nodes` with the edges that close them."""
    comps = sccs(nodes, edges)
    print(f"\n(a) circles {where}: {len(comps)}")
    for c in comps:
        print("  " + " <-> ".join(name(m) for m in c))
        for a, b in cycle_edges(c, edges):
            print(f"      {name(a)} -> {name(b)}")
    return len(comps)


def report(root, with_tests, show_edges):
    modules, edges = build(root, with_tests)
    top_edges = {(a[:1], b[:1]) for a, b in edges if a[:1] != b[:1]}
    top_nodes = {m[:1] for m in modules if m}
    print(f"root: {root}  (test code {'included' if with_tests else 'left out'})")
    print(f"modules: {len(modules) - (() in modules)}  edges: {len(edges)}  top-level edges: {len(top_edges)}")
    circles = print_circles("between top-level modules", top_nodes, top_edges)
    for folder in FOLDERS:
        prefix = tuple(folder.split("::"))
        inner = {m for m in modules if m[: len(prefix)] == prefix}
        depth = len(prefix) + 1
        inner_edges = {
            (a[:depth], b[:depth])
            for a, b in edges
            if a in inner and b in inner and a[:depth] != b[:depth]
        }
        circles += print_circles(f"inside {folder}", {m[:depth] for m in inner}, inner_edges)
    rank = {n: i for i, n in enumerate(LAYERS)}
    unknown = sorted(n[0] for n in top_nodes if n[0] not in rank)
    up = sorted(
        (a, b) for a, b in top_edges if a[0] in rank and b[0] in rank and rank[b[0]] > rank[a[0]]
    )
    print(f"\n(b) upward arrows against {' -> '.join(LAYERS)}: {len(up)}")
    for a, b in up:
        why = sorted(
            f"{name(x)} -> {name(y)}" for x, y in edges if x[:1] == a and y[:1] == b
        )
        print(f"  {name(a)} -> {name(b)}   ({'; '.join(why)})")
    if unknown:
        print(f"\nmodules missing from LAYERS: {', '.join(unknown)}")
    print(f"\ntotal: {circles} circles, {len(up)} upward arrows")
    if show_edges:
        print("\ntop-level edges (file edges behind each):")
        for a, b in sorted(top_edges):
            why = sorted(f"{name(x)} -> {name(y)}" for x, y in edges if x[:1] == a and y[:1] == b)
            print(f"  {name(a)} -> {name(b)}   ({'; '.join(why)})")


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    root = args[0] if args else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report(root, "--no-tests" not in argv, "--edges" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])

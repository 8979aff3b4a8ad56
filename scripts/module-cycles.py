#!/usr/bin/env python3
"""Import cycles between the top-level modules of src/.

Builds the graph "module A uses `crate::B::...`" (A and B top-level modules
of src/: `src/a.rs` or `src/a/`), prints every cycle with the lines that make
its edges, and exits 1 if there is one. `lib.rs` is the crate root, which
wires every module together; uses of root items (`crate::run`) are listed
as edges to `(root)` but are not part of the cycle check.

    scripts/module-cycles.py          # cycles, exit 1 if any
    scripts/module-cycles.py --graph  # every edge with the lines behind it
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line numbers."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.compile(r"'(\\.|[^\\'])[^']*?'").match(text, i)) and len(m.group(0)) <= 12:
            # a char literal ('a', '\n', '\u{1F600}'); a lifetime has no closing quote
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def top_modules():
    mods = set()
    for p in SRC.iterdir():
        if p.is_dir() and (p / "mod.rs").exists():
            mods.add(p.name)
        elif p.suffix == ".rs" and p.stem not in ("lib", "main"):
            mods.add(p.stem)
    return mods


def module_of(path):
    rel = path.relative_to(SRC)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "(root)" if rel.stem == "lib" else rel.stem


def crate_paths(code):
    """Yields (offset, first segment) for every `crate::...` path, expanding
    `crate::{a::x, b}` groups."""
    for m in re.finditer(r"\bcrate\s*::\s*", code):
        rest = m.end()
        if code.startswith("{", rest):
            depth, j = 0, rest
            while j < len(code):
                if code[j] == "{":
                    depth += 1
                elif code[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            inner, depth, start = code[rest + 1 : j], 0, 0
            for k, ch in enumerate(inner + ","):
                if ch in "{(":
                    depth += 1
                elif ch in "})":
                    depth -= 1
                elif ch == "," and depth == 0:
                    seg = re.match(r"\s*(\w+)", inner[start:k])
                    if seg:
                        yield m.start(), seg.group(1)
                    start = k + 1
        else:
            seg = re.match(r"\w+", code[rest:])
            if seg:
                yield m.start(), seg.group(0)


def edges():
    mods = top_modules()
    found = defaultdict(list)  # (from, to) -> ["file:line", ...]
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "main.rs" and path.parent == SRC:
            continue  # the binary, another crate
        src_mod = module_of(path)
        code = strip_comments_and_strings(path.read_text())
        where = lambda off: f"{path.relative_to(SRC.parent)}:{code.count(chr(10), 0, off) + 1}"
        for off, seg in crate_paths(code):
            target = seg if seg in mods else "(root)"
            if target != src_mod:
                found[(src_mod, target)].append(where(off))
        if src_mod == "(root)":
            # the root names its modules without `crate::`
            for m in re.finditer(r"(?<![:\w])(\w+)\s*::", code):
                if m.group(1) in mods:
                    found[("(root)", m.group(1))].append(where(m.start()))
    return mods, found


def cycles(mods, found):
    graph = defaultdict(set)
    for a, b in found:
        if "(root)" not in (a, b):
            graph[a].add(b)
    result, order = [], sorted(mods)
    # every simple cycle once, started at its smallest module (Johnson-style, small graph)
    for s in order:
        stack = [(s, [s])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == s:
                    result.append(path + [s])
                elif nxt > s and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(result, key=lambda c: (len(c), c))


def main():
    mods, found = edges()
    if "--graph" in sys.argv:
        for (a, b), lines in sorted(found.items()):
            print(f"{a} -> {b}: {', '.join(lines)}")
        return 0
    found_cycles = cycles(mods, found)
    for c in found_cycles:
        print(" -> ".join(c))
        for a, b in zip(c, c[1:]):
            print(f"    {a} -> {b}: {', '.join(found[(a, b)])}")
    root_users = sorted(a for (a, b) in found if b == "(root)")
    if root_users:
        print(f"(uses of crate root items, not checked: {', '.join(root_users)})")
    print(f"{len(found_cycles)} cycle(s)")
    return 1 if found_cycles else 0


if __name__ == "__main__":
    sys.exit(main())

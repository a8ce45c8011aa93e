#!/usr/bin/env python3
"""Fails when a file of the repository cites something a reader of the repository cannot follow.

Checked in every tracked text file (``git ls-files``, or a walk without git):
- a path into the repository (``docs/…``, ``src/…``, ``include/…``, ``tests/…``, ``bench/…``,
  ``scripts/…``, ``python/…``, ``examples/…``, ``tools/…``, ``cmake/…``) must exist, from the
  root or from the citing file's directory; a path that only exists after a build is named in
  GENERATED; code blocks in Markdown (a user's project in an example) are not checked;
- a Markdown file named on its own (``safety.md``) must exist next to the citing file, in
  ``docs/`` or at the root;
- no citation of notes outside the repository (``../shared``, a design, anchors or scenarios file
  that is not here) and no "issue N": say the reason instead. Public references (a URL, CPython's
  ``gh-NNN``, ``python/cpython#NNN``) are fine.

    python3 tools/check_references.py [ROOT]     # prints each problem as file:line: what
    python3 tools/check_references.py --self-test

Run by ctest (tests/CMakeLists.txt: repository_references, and its self-test).
"""

import os
import re
import subprocess
import sys
import tempfile

TOP = ("docs", "src", "include", "tests", "bench", "scripts", "python", "examples", "tools",
       "cmake", "requirements")
REPO_PATH = re.compile(r"(?<![\w./@-])((?:%s)/[\w.+-]+(?:/[\w.+-]+)*)" % "|".join(TOP))
GITHUB_REPO = re.compile(r"python/(?:cpython|peps)\b")  # python/cpython#NNN: public
MARKDOWN = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
ISSUE = re.compile(r"\b[Ii]ssues? #?\d+\b")
OUTSIDE = re.compile(r"\.\./shared|\b(?:DESIGN|ANCHORS|SCENARIOS|DEVELOPERS)\.md\b")
# Made by a build, not committed: a reference to them is fine.
GENERATED = {"python/pyattach/_core.pyi"}
TEXT = (".md", ".py", ".pyi", ".cpp", ".hpp", ".h", ".sh", ".txt", ".cmake", ".toml", ".cfg",
        ".supp", ".in", "")


def tracked(root):
    try:
        out = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split("\n")
        return [f for f in out if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x != "build"]
            files += [os.path.relpath(os.path.join(d, n), root) for n in names]
        return files


def problems_in(root, rel):
    path = os.path.join(root, rel)
    if os.path.splitext(rel)[1] not in TEXT or not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError:
        return []
    out = []
    here = os.path.dirname(rel)
    fenced = False
    for n, line in enumerate(lines, 1):
        if rel.endswith(".md") and line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for m in REPO_PATH.finditer(line):
            ref = m.group(1).rstrip(".,:;")
            if any(c in ref for c in "*<{$") or ref in GENERATED or GITHUB_REPO.match(ref):
                continue
            if not any(os.path.exists(os.path.join(root, d, ref)) for d in ("", here)):
                out.append(f"{rel}:{n}: cites {ref}, which is not in the repository")
        for m in MARKDOWN.finditer(line):
            name = m.group(1)
            if OUTSIDE.search(name):
                continue  # reported below
            if not any(os.path.exists(os.path.join(root, d, name)) for d in (here, "docs", "")):
                out.append(f"{rel}:{n}: cites {name}, which is not in the repository")
        for m in OUTSIDE.finditer(line):
            out.append(f"{rel}:{n}: cites {m.group(0)}, notes outside the repository")
        for m in ISSUE.finditer(line):
            out.append(f"{rel}:{n}: cites '{m.group(0)}': say the reason instead")
    return out


def check(root):
    out = []
    for rel in tracked(root):
        if rel == "tools/check_references.py":
            continue  # its own documentation shows the patterns
        out += problems_in(root, rel)
    return out


def self_test():
    """The check finds each kind of problem, and passes a clean file."""
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "docs"))
        os.makedirs(os.path.join(root, "src"))
        with open(os.path.join(root, "docs", "here.md"), "w") as f:
            f.write("see src/real.cpp and here.md\n")
        with open(os.path.join(root, "src", "real.cpp"), "w") as f:
            f.write("// see docs/here.md, src/gone.cpp and gone.md (DESIGN.md, issue 7)\n")
        found = check(root)
    want = ["src/gone.cpp", "gone.md", "DESIGN.md", "issue 7"]
    missing = [w for w in want if not any(w in p for p in found)]
    clean = [p for p in found if p.startswith("docs/here.md")]
    if missing or clean or len(found) != len(want):
        print("self-test failed: found", found, "missing", missing)
        return 1
    print("self-test: ok (%d problems found as expected)" % len(found))
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = check(root)
    for p in found:
        print(p)
    print(f"{len(found)} reference problem(s)" if found else "references: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

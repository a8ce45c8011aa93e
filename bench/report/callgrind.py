"""Reading callgrind: instruction counts per label, the pools' counted run, and where
pyattach's instructions go per function (the fast-path breakdown, with addr2line for inlined
frames)."""

import collections
import glob
import os
import re
import subprocess
import sys

from .common import read_text


def load_pool_counted(directory):
    """{("counted", alt): {"tasks", "status", "ir", "ir_per_task"}} from pool-counted.tsv and the
    pool.callgrind.out.N dumps (pyattach_pool_bench --callgrind N under callgrind)."""
    out = {}
    for line in read_text(os.path.join(directory, "pool-counted.tsv")).splitlines():
        f = line.split("\t")
        if len(f) != 4 or f[0] != "pool-counted" or f[1] == "label":
            continue
        out[("counted", f[1].split("/")[-1])] = {"tasks": int(f[2]), "status": f[3]}
    for dump in glob.glob(os.path.join(directory, "pool.callgrind.out.*")):
        label = dump_label(dump)
        if not label or not label.startswith("pool/"):
            continue
        entry = out.setdefault(("counted", label.split("/")[-1]),
                               {"tasks": None, "status": "no counted line"})
        entry["ir"] = program_total(annotate(dump, "--threshold=100"))
        if entry["ir"] is not None and entry.get("tasks"):
            entry["ir_per_task"] = entry["ir"] / entry["tasks"]
    return out


def dump_label(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("desc: Trigger: Client Request: "):
                return line.split("Client Request: ", 1)[1].strip()
            if line.startswith("fn="):
                break
    return None


def annotate(path, *extra):
    return subprocess.run(["callgrind_annotate", *extra, path], capture_output=True, text=True,
                          check=False).stdout


def program_total(text):
    m = re.search(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?PROGRAM TOTALS", text, re.M)
    return int(m.group(1).replace(",", "")) if m else None


def load_counted(directory):
    """{(alt, workload): {"iterations","states","kept","status","ir","ir_per_iter","dump"}}"""
    out = {}
    for line in read_text(os.path.join(directory, "counted.tsv")).splitlines():
        f = line.split("\t")
        if len(f) != 6 or f[0] != "counted" or f[1] == "label":
            continue
        _, alt, workload = f[1].split("/")
        out[(alt, workload)] = {"iterations": int(f[2]), "states": int(f[3]), "kept": f[4],
                                "status": f[5]}
    for dump in glob.glob(os.path.join(directory, "callgrind.out.*")):
        label = dump_label(dump)
        if not label or not label.startswith("attach/"):
            continue
        _, alt, workload = label.split("/")
        entry = out.setdefault((alt, workload), {"iterations": None, "states": None,
                                                  "kept": "-", "status": "no counted line"})
        entry["dump"] = dump
        total = program_total(annotate(dump, "--threshold=100"))
        entry["ir"] = total
        if total is not None and entry.get("iterations"):
            entry["ir_per_iter"] = total / entry["iterations"]
    return out


def attribution(dump):
    """Self instructions by where the code lives: pyattach's, the harness's, CPython's, libc's."""
    text = annotate(dump, "--threshold=100")
    total = program_total(text) or 0
    buckets = {"pyattach (include/, src/)": 0, "benchmark harness (bench/)": 0,
               "CPython (libpython)": 0, "libc / libstdc++": 0, "other": 0}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        if line.startswith("----") and buckets and sum(buckets.values()) > 0:
            break
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        where = m.group(2)
        file, _, rest = where.partition(":")
        if re.search(r"(^|/)include/pyattach/|(^|/)src/\w+\.(cpp|hpp)$", file) or (
                "/usr/include/c++" in file and
                ("pyattach::" in rest or re.search(r"pyattach_(scope|nested|detach)", rest))):
            # pyattach's own lines, and the std::atomic code inlined into them
            buckets["pyattach (include/, src/)"] += ir
        elif re.search(r"(^|/)bench/", file):
            buckets["benchmark harness (bench/)"] += ir
        elif "libpython" in where or re.search(r"(^|/)(Python|Include|Objects|Modules)/", file):
            buckets["CPython (libpython)"] += ir
        elif "libc" in where or "nptl" in file or "csu" in file or "/usr/include/c++" in file \
                or "libstdc++" in where or "glibc" in file or "sysdeps" in file:
            buckets["libc / libstdc++"] += ir
        else:
            buckets["other"] += ir
    return total, buckets


PAIR = ("PyEval_RestoreThread", "PyEval_SaveThread")


def _pos(token, prev):
    if token == "*":
        return prev
    if token[0] in "+-":
        return prev + int(token, 0)
    return int(token, 0)


def parse_dump(path):
    """One callgrind dump (positions: instr line, events: Ir) as
    {"cmd": str, "total": int, "fns": {(ob, fn): {"self": [(addr, ir)], "calls": [(addr, (cob, cfn), ir)]}}}.
    Names are uncompressed; addresses are the object's own (link-time) addresses."""
    names = {"ob": {}, "fl": {}, "fn": {}}
    kind_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
               "fn": "fn", "cfn": "fn"}

    def name(kind, value):
        m = re.match(r"^\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        table = names[kind_of[kind]]
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), "?")

    fns = {}
    cmd, total, positions = "", 0, ["line"]
    ob = fn = cob = cfn = None
    pending_call = None
    addr = line = 0
    cur = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            c = s[0]
            if c.isdigit() or c in "+-*" or s.startswith("0x"):
                parts = s.split()
                if positions == ["instr", "line"]:
                    addr = _pos(parts[0], addr)
                    line = _pos(parts[1], line)
                    costs = parts[2:]
                else:
                    addr = _pos(parts[0], addr)
                    costs = parts[1:]
                ir = int(costs[0]) if costs else 0
                if pending_call is not None:
                    cur["calls"].append((addr, pending_call, ir))
                    pending_call = None
                else:
                    cur["self"].append((addr, ir))
                continue
            key, _, value = s.partition("=")
            if ":" in s and (not _ or s.index(":") < s.index("=")):
                k, _, v = s.partition(":")
                v = v.strip()
                if k == "cmd":
                    cmd = v
                elif k == "positions":
                    positions = v.split()
                elif k in ("summary", "totals"):
                    total = int(v.split()[0])
                continue
            if key == "ob":
                ob = name("ob", value)
            elif key in ("fl", "fi", "fe"):
                name(key, value)
            elif key == "fn":
                fn = name("fn", value)
                cur = fns.setdefault((ob, fn), {"self": [], "calls": []})
                cob = None
            elif key == "cob":
                cob = name("cob", value)
            elif key in ("cfi", "cfl"):
                name(key, value)
            elif key == "cfn":
                cfn = name("cfn", value)
            elif key == "calls":
                pending_call = (cob or ob, cfn)
                cob = None
    if not total:
        total = sum(ir for v in fns.values() for _, ir in v["self"])
    return {"cmd": cmd, "total": total, "fns": fns}


def inline_frames(binary, addresses):
    """{addr: [(function, file), ...] innermost first} from addr2line -f -i -C: the functions
    inlined at each address, down to the real one (needs the binary's -g debug info)."""
    addresses = sorted(set(addresses))
    out = {}
    if not addresses or not os.path.exists(binary):
        return out
    text = subprocess.run(["addr2line", "-f", "-i", "-C", "-a", "-e", binary] +
                          [hex(a) for a in addresses], capture_output=True, text=True,
                          check=False).stdout.splitlines()
    cur = None
    i = 0
    while i < len(text):
        line = text[i]
        if re.match(r"^0x[0-9a-f]+$", line):
            cur = int(line, 16)
            out[cur] = []
            i += 1
            continue
        if cur is not None and i + 1 < len(text):
            out[cur].append((line, text[i + 1].rsplit(":", 1)[0]))
        i += 2
    return out


def short_fn(name):
    """pyattach::attach_scope::attach_fast(pyattach::source_site const&) -> attach_scope::attach_fast"""
    depth, out = 0, ""
    for ch in name:  # drop argument lists and template arguments
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        elif depth == 0:
            out += ch
    out = out.replace("pyattach::", "").replace(" const", "").strip()
    return out


def is_pyattach(function):
    return function.startswith("pyattach::")


COLUMNS = ("cpython", "entry", "exit", "ool", "loop")


def breakdown(dump_path, binary=None):
    """Instructions of one dump split by who spends them:
      cpython  PyEval_RestoreThread + PyEval_SaveThread, inclusive, called from the binary
      entry    pyattach code inlined into the caller from a constructor (attach_scope(),
               detach_scope(), attach_fast, ...), and what it calls (other than the pair)
      exit     the same from a destructor (~attach_scope, finish, ...)
      ool      pyattach functions that are not inlined (self + what they call, but the pair)
      loop     everything else: the harness's loop and body
    and {(column, detail): ir} with the pyattach functions named. A line belongs to a pyattach
    function when addr2line's inline chain at its address has one; the outermost pyattach frame
    says entry (a constructor or anything not a destructor) or exit (a destructor)."""
    d = parse_dump(dump_path)
    if binary is None:
        binary = d["cmd"].split()[0] if d["cmd"] else ""
    fns = d["fns"]
    main = [k for k in fns if k[0] == binary]
    addrs = [a for k in main for a, _ in fns[k]["self"]] + \
            [a for k in main for a, _, _ in fns[k]["calls"]]
    if os.path.exists(binary) and os.path.getmtime(binary) > os.path.getmtime(dump_path):
        print(f"report: {binary} is newer than {dump_path}: the breakdown may name the wrong "
              "functions (rerun the callgrind step)", file=sys.stderr)
    frames = inline_frames(binary, addrs)
    incl = {k: sum(ir for _, ir in v["self"]) + sum(ir for _, _, ir in v["calls"])
            for k, v in fns.items()}
    called = {c for v in fns.values() for _, c, _ in v["calls"]}
    cols = collections.Counter()
    detail = collections.Counter()

    def classify(fn_key, addr, ctx):
        chain = frames.get(addr) or [(fn_key[1], "")]
        py = [f for f, _ in chain if is_pyattach(f)]
        outer_real = chain[-1][0]
        if is_pyattach(fn_key[1]) or is_pyattach(outer_real):
            # inside an out-of-line pyattach function
            own = short_fn(fn_key[1]) + "()"
            where = f"{ctx[1]} → {own}" if ctx else own
            side = ctx[0] if ctx else ("exit" if "~" in fn_key[1] else "entry")
            inner = short_fn(py[0]) if py and short_fn(py[0]) != short_fn(fn_key[1]) else None
            return "ool", side, where + (f" › {inner}" if inner else "")
        if not py:
            return "loop", None, "harness"
        outer = py[-1]
        side = "exit" if any("::~" in f for f in py) else "entry"
        # the innermost frame defined in attach.hpp: the enclosing pyattach function
        encl = next((f for f, file in chain if is_pyattach(f) and file.endswith("attach.hpp")), outer)
        key = short_fn(outer)
        if short_fn(encl) != key:
            key += f" › {short_fn(encl)}"
        return side, side, key

    def add(col, key, ir, side=None):
        cols[col] += ir
        if col == "ool":
            cols[f"ool:{side}"] += ir
        detail[(col, key)] += ir

    def walk(fn_key, scale, ctx, depth):
        v = fns[fn_key]
        for addr, ir in v["self"]:
            col, side, key = classify(fn_key, addr, ctx)
            add(col, key, ir * scale, side)
        for addr, callee, ir in v["calls"]:
            col, side, key = classify(fn_key, addr, ctx)
            cname = callee[1]
            if cname in PAIR:
                add("cpython", cname, ir * scale)
            elif callee[0] == binary and callee in fns and depth < 8 and incl.get(callee):
                sub_ctx = (side, key) if side else None
                walk(callee, scale * ir / incl[callee], sub_ctx, depth + 1)
            else:
                add(col, f"{key} → {short_fn(cname).split('@@')[0]}" if col != "loop" else key,
                    ir * scale, side)

    for k in main:
        if k not in called:
            walk(k, 1.0, None, 0)
    rest = d["total"] - sum(cols[c] for c in COLUMNS)
    if abs(rest) > 0.5:
        add("loop", "not reached from the binary's code", rest)
    return d["total"], cols, detail


def annotated_lines(dump, source_suffixes):
    """The costed lines of pyattach's sources from callgrind_annotate --auto=yes."""
    text = annotate(dump, "--threshold=100", "--auto=yes", "--context=0")
    out, current = [], None
    for line in text.splitlines():
        m = re.match(r"^-- Auto-annotated source: (.*)$", line)
        if m:
            current = m.group(1) if m.group(1).endswith(source_suffixes) else None
            if current:
                # relative to the checkout, wherever it is (a worktree, a clean clone)
                m2 = re.search(r"(?:^|/)((?:include|src)/.*)$", current)
                out.append(f"## {m2.group(1) if m2 else current}")
            continue
        if current is None or line.startswith("-- line") or not line.strip():
            continue
        if re.match(r"^\s*\.\s", line) or line.startswith("----") or line.startswith("Ir"):
            continue
        if re.match(r"^\s*[\d,]+", line):
            out.append(line.rstrip())
    return out

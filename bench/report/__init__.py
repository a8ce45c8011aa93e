"""bench/report — turns pyattach_bench's results into docs/benchmarks.md and its chart.

What it compares and why: every figure is an alternative's cost next to the floor (a persistent
PyThreadState with PyEval_RestoreThread/SaveThread) measured in the same run on the same CPython,
because this machine is shared and wall times drift between runs; the targets are
judged on callgrind's instruction counts, which do not drift.

Input: one result directory per CPython ("leg"), as scripts/bench.sh leaves them:
  leg, python            the leg's name and interpreter path (one line each)
  wall.json              Google Benchmark JSON (repetitions with median/min/max aggregates;
                         contend/<alt>: the two-thread case, its counters ns_per_pair,
                         tsc_per_pair, b_share, tsc_ghz)
  counted.tsv            the counted mode's lines (thread states created, kept, status)
  callgrind.out.N        one callgrind dump per label (desc: Trigger: Client Request: LABEL),
                         with instruction addresses (--dump-instr=yes): the per-function
                         breakdown also reads the binary named on its cmd: line (addr2line)
  status                 "ok" or what failed
  pool.json              pyattach_pool_bench's Google Benchmark JSON (the "Pools" section):
                         throughput per repetition, latency percentiles, GIL waits; absent: no
                         Pools section
  pool-counted.tsv       pyattach_pool_bench --callgrind N's lines, and pool.callgrind.out.N its
                         dumps (instructions per Python task)
Output: the Markdown report and a PNG (matplotlib, Debian's python3-matplotlib).

The parts: load (Google Benchmark JSON), callgrind (dumps and the per-function breakdown),
render (the Markdown per interpreter), pools (the Pools section), chart (the PNG), common
(what they share), __main__ (the command).

Run with Debian's /usr/bin/python3 (the PATH python3 may lack matplotlib), from the repository:
  PYTHONPATH=bench /usr/bin/python3 -m report --out docs/benchmarks.md --chart docs/benchmarks.png DIR...
"""

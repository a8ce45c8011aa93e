"""``python -m pyattach``: a smoke test a user can type. Runs a small executor, prints the thread
report while its workers are inside tasks, then the executor's counters and its GIL metrics;
exits 0 on success."""

import sys
import threading

import pyattach


def main():
    workers = 2
    pyattach.set_metrics(True)
    inside = threading.Barrier(workers + 1)
    release = threading.Event()

    def task(i):
        if i < workers:  # the first tasks hold both workers until the report is printed
            inside.wait(timeout=10)
            release.wait(timeout=10)
        return i * i

    with pyattach.ThreadPoolExecutor(workers, thread_name_prefix="pyattach-demo") as ex:
        futures = [ex.submit(task, i) for i in range(100)]
        inside.wait(timeout=10)
        print("threads while both workers are inside a task:")
        print("%-22s %9s %-14s %-9s %6s  %s" % ("name", "native_id", "pool", "state", "scopes",
                                                "thread state"))
        for t in pyattach.threads():
            print("%-22s %9d %-14s %-9s %6d  %s%s" % (
                t.name or "?", t.native_id, t.pool or "-", t.state, t.scopes,
                "pyattach's" if t.made_by_pyattach else ("yes" if t.has_thread_state else "none"),
                "  (caller)" if t.is_caller else ""))
        release.set()
        results = [f.result(timeout=10) for f in futures]
        s = [d for d in pyattach.stats() if d["name"] == "pyattach-demo"][0]
    ok = results == [i * i for i in range(100)] and s["completed"] == 100
    print()
    print("executor %s: submitted %d, completed %d, failed %d, cancelled %d" % (
        s["name"], s["submitted"], s["completed"], s["failed"], s["cancelled"]))
    for w in s["workers"]:
        print("  worker %-16s native_id %-8d tasks %-4d attaches %d" % (
            w["name"], w["native_id"], w["tasks"], w["attaches"]))
    pool = [p for p in pyattach.pool_metrics() if p["name"] == "pyattach-demo"][0]
    print("GIL metrics of its workers: %d attaches" % pool["attaches"])
    for kind in ("wait", "attached"):
        h = pool[kind]
        print("  %-8s %4d  p50 %8.3f ms  p99 %8.3f ms  max %8.3f ms" % (
            kind, h["count"], h["p50_s"] * 1e3, h["p99_s"] * 1e3, h["max_s"] * 1e3))
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

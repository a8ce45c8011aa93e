"""The chart (docs/benchmarks.png), with Debian's python3-matplotlib."""

from .common import ALTERNATIVES, POOL_NOOP, POOL_PYTHON


def chart(legs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alts = [a for a, _ in ALTERNATIVES]
    with_pools = any(leg["pool"] for leg in legs)  # a fourth panel: the Pools section's rows
    fig, axes = plt.subplots(4 if with_pools else 3, 1, figsize=(13, 17.5 if with_pools else 13))
    width = 0.8 / max(1, len(legs))
    panels = [
        ("instructions per iteration, empty body (callgrind)",
         lambda leg, a: leg["counted"].get((a, "empty"), {}).get("ir_per_iter"), False),
        ("instructions per iteration, one Python call (callgrind)",
         lambda leg, a: leg["counted"].get((a, "call"), {}).get("ir_per_iter"), False),
        ("wall time per iteration, one Python call, ns (median; log scale)",
         lambda leg, a: leg["wall"].get(("attach", a, "call"), {}).get("median"), True),
    ]
    for ax, (title, get, log) in zip(axes, panels):
        for i, leg in enumerate(legs):
            xs, ys = [], []
            for j, a in enumerate(alts):
                v = get(leg, a)
                if v is not None:
                    xs.append(j + (i - (len(legs) - 1) / 2) * width)
                    ys.append(v)
            version = leg["context"].get("python_version", "?").split(" ")[0]
            ax.bar(xs, ys, width, label=f"{leg['name']} ({version})")
        ax.set_title(title)
        ax.set_xticks(range(len(alts)))
        ax.set_xticklabels(alts, rotation=20, ha="right")
        if log and any(p.get_height() > 0 for p in ax.patches):  # a partial run: linear
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    if with_pools:
        ax = axes[3]
        rows = [("noop", a) for a, _ in POOL_NOOP] + [("python", a) for a, _, _ in POOL_PYTHON]
        for i, leg in enumerate(legs):
            xs, ys = [], []
            for j, key in enumerate(rows):
                e = leg["pool"].get(key, {})
                if e.get("median") is not None and not e.get("error"):
                    xs.append(j + (i - (len(legs) - 1) / 2) * width)
                    ys.append(e["median"])
            version = leg["context"].get("python_version", "?").split(" ")[0]
            ax.bar(xs, ys, width, label=f"{leg['name']} ({version})")
        ax.set_title("pools, 2 workers: tasks per second (median; log scale; higher is better): "
                     "C++ no-op tasks, then tasks calling Python")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{g}/{a}" for g, a in rows], rotation=20, ha="right")
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=3)
    fig.suptitle("pyattach vs the alternatives: cost per attach + body + detach on a native thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

#!/usr/bin/python3
"""tools/timeline.py — draws pyattach timeline traces as one PNG, one panel per trace.

Reads the Chrome trace-event JSON the library's trace writer emits (see tools/trace_check.py,
whose parsing this reuses: its span lists and held intervals). Each panel has one lane per thread
(named by its thread_name metadata, else its tid), x in ms from the panel's first event:

  held GIL       solid bars: where the innermost open span among attached / waiting for the GIL
                 / detached (blocking C++) is `attached` (the GIL invariant: on a GIL build no
                 two threads' held bars overlap; an attached span minus its nested waiting and
                 detached spans)
  waiting        the thread asked for the GIL and does not have it yet
  detached       blocking C++ inside an attach, the GIL released
  task           pool tasks, thin outlined bars under the lane
  instants       small markers above the lane, named in the legend; process- and global-scope
                 ones (gate closing) also as a dashed line across the panel

  /usr/bin/python3 tools/timeline.py --out X.png [--title T] [--same-x] "label=path.json" ...

A bare path is labelled with its file name. matplotlib with Agg: run it with Debian's
/usr/bin/python3 (the PATH python3 may lack matplotlib).
"""

import argparse
import os
import sys

import trace_check

HELD_COLOUR = "#1f77b4"
WAITING_COLOUR = "#ff7f0e"
DETACHED_COLOUR = "#d9d9d9"
TASK_FACE, TASK_EDGE = "#e5d8f0", "#7b4fa0"
# Instant markers by name, in order of first appearance; misuse reports are always red crosses.
MARKERS = [("v", "#2ca02c"), ("^", "#8c564b"), ("D", "#e377c2"), ("s", "#17becf"),
           ("P", "#bcbd22"), ("*", "#7f7f7f")]
MISUSE_MARKER = ("X", "#d62728")

# Lane geometry, in lane units (lane i is centred on y = i, the first lane at the top).
BAR = (-0.25, 0.45)  # the GIL bar: y offset, height
TASK = (0.25, 0.15)  # the task strip under it
MARK_Y = -0.36  # instant markers above the bar


def load_panels(panels):
    """[(label, Result)] for [(label, trace dict or path)]; a panel's problems go to stderr (the
    picture is drawn anyway: a broken trace is what one wants to look at)."""
    out = []
    for label, trace in panels:
        # The overlap check is off: a free-threaded trace draws fine, and overlapping held bars
        # show for themselves.
        result = trace_check.check(trace, gil_build=False)
        if result.problems:
            print(f"timeline: {label}: {len(result.problems)} problems, e.g. {result.problems[0]}",
                  file=sys.stderr)
        out.append((label, result))
    return out


def instant_styles(results):
    """{instant name: (marker, colour)}, the same across panels."""
    styles = {}
    for result in results:
        for instants in result.instants.values():
            for ev in instants:
                if ev.name in styles:
                    continue
                if ev.cat == "misuse" or ev.name.startswith("misuse"):
                    styles[ev.name] = MISUSE_MARKER
                else:
                    others = sum(1 for s in styles.values() if s != MISUSE_MARKER)
                    styles[ev.name] = MARKERS[others % len(MARKERS)]
    return styles


def panel_title(label, result):
    """The label and the panel's totals: its length, GIL held, and time spent waiting."""
    if result.first_ts is None:
        return f"{label}: no events"
    length = (result.last_ts - result.first_ts) / 1000
    held = sum(e - s for intervals in result.held.values() for s, e in intervals) / 1000
    waiting = sum(s.end - s.start for spans in result.span_list.values() for s in spans
                  if s.name == trace_check.WAITING) / 1000
    return (f"{label}: {len(result.spans)} threads, {length:.3f} ms; GIL held {held:.3f} ms "
            f"({100 * held / length if length else 0:.0f}%), waiting {waiting:.3f} ms "
            "(summed over threads)")


def draw_panel(ax, label, result, styles, xmax):
    tids = list(result.spans)
    origin = result.first_ts or 0

    def ms(t):
        return (t - origin) / 1000

    def bars(intervals, y, height, **kw):
        if intervals:
            ax.broken_barh([(ms(s), (e - s) / 1000) for s, e in intervals], (y, height), **kw)

    def gil_bars(intervals, lane, colour):
        # Outlined in their own colour: a 0.1 ms hold in a 300 ms panel is far narrower than a
        # pixel, and would not show at all; the outline draws it as a thin line.
        bars(intervals, lane + BAR[0], BAR[1], facecolors=colour, edgecolors=colour,
             linewidth=0.8)

    for lane, tid in enumerate(tids):
        spans = result.span_list[tid]
        by_name = {}
        for s in spans:
            by_name.setdefault(s.name, []).append((s.start, s.end))
        gil_bars(by_name.get(trace_check.DETACHED), lane, DETACHED_COLOUR)
        gil_bars(by_name.get(trace_check.WAITING), lane, WAITING_COLOUR)
        gil_bars(result.held[tid], lane, HELD_COLOUR)
        bars(by_name.get("task"), lane + TASK[0], TASK[1], facecolors=TASK_FACE,
             edgecolors=TASK_EDGE, linewidth=0.4)
        for ev in result.instants[tid]:
            marker, colour = styles[ev.name]
            ax.plot([ms(ev.ts)], [lane + MARK_Y], marker=marker, color=colour, markersize=6,
                    linestyle="none")
            if ev.scope in ("g", "p"):
                ax.axvline(ms(ev.ts), color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_yticks(range(len(tids)))
    ax.set_yticklabels([result.thread_names.get(tid, f"tid {tid}") for tid in tids], fontsize=8)
    ax.set_ylim(len(tids) - 0.5, -0.5)  # the first thread on top
    ax.set_xlim(0, xmax if xmax > 0 else 1)
    ax.set_xlabel("ms from the first event", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(panel_title(label, result), fontsize=10, loc="left")
    if result.first_ts is None:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center")


def render(panels, out, title=None, same_x=False):
    """Draws [(label, trace dict or path)] as stacked panels into the PNG `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.lines as mlines
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    loaded = load_panels(panels)
    results = [r for _, r in loaded]
    styles = instant_styles(results)
    lengths = [(r.last_ts - r.first_ts) / 1000 if r.first_ts is not None else 0 for r in results]
    lanes = [max(1, len(r.spans)) for r in results]

    # Inches at 100 dpi: 1400 px wide; a legend row, then per panel its axes and title (1.5 in)
    # plus 0.4 in a lane.
    heights = [0.4] + [1.5 + 0.4 * n for n in lanes]
    fig, axes = plt.subplots(len(loaded) + 1, 1, figsize=(14, sum(heights) + (0.4 if title else 0)),
                             gridspec_kw={"height_ratios": heights})
    for ax, (label, result), length in zip(axes[1:], loaded, lengths):
        draw_panel(ax, label, result, styles, max(lengths) if same_x else length)

    handles = [mpatches.Patch(color=HELD_COLOUR, label="GIL held"),
               mpatches.Patch(color=WAITING_COLOUR, label="waiting for the GIL"),
               mpatches.Patch(color=DETACHED_COLOUR, label="detached (blocking C++)"),
               mpatches.Patch(facecolor=TASK_FACE, edgecolor=TASK_EDGE, label="pool task")]
    handles += [mlines.Line2D([], [], marker=m, color=c, linestyle="none", label=name)
                for name, (m, c) in styles.items()]
    axes[0].axis("off")
    axes[0].legend(handles=handles, loc="center", ncol=min(len(handles), 6), fontsize=9,
                   frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_panel(arg):
    """"label=path" -> (label, path); a bare path (or an existing file whose name has an =) is
    labelled with its file name."""
    if "=" in arg and not os.path.exists(arg):
        label, path = arg.split("=", 1)
        return label, path
    return os.path.basename(arg), arg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--title")
    ap.add_argument("--same-x", action="store_true",
                    help="one x range for every panel (the longest), to compare durations")
    ap.add_argument("panels", nargs="+", metavar="LABEL=TRACE.json")
    args = ap.parse_args(argv)
    render([parse_panel(p) for p in args.panels], args.out, title=args.title, same_x=args.same_x)
    return 0


if __name__ == "__main__":
    sys.exit(main())

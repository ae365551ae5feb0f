#!/usr/bin/python3
"""A plot of `memreplica bench migrate --json` reports: each cell's downtime
(every run a dot, the p50 a bar) by writer and link, one bar per mode and
timing, with each cell's target marked. Runs on Debian's python3-matplotlib.

usage: plot_migrate.py OUT.png REPORT.json [REPORT.json ...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"precopy": "#1f77b4", "postcopy": "#d62728", "hybrid": "#2ca02c"}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cells = []
    for path in sys.argv[2:]:
        report = json.load(open(path))
        for c in report["cells"]:
            c = dict(c)
            c["link"] = f"{c['link']}\n{report['chunkSize'] >> 10} KiB chunks"
            cells.append(c)
    groups = []  # (link, writer) in order of appearance
    for c in cells:
        key = (c["link"], c["writer"])
        if key not in groups:
            groups.append(key)
    series = []  # (mode, when) in order of appearance
    for c in cells:
        key = (c["mode"], c.get("when", "now"))
        if key not in series:
            series.append(key)
    width = 0.8 / len(series)
    labelled = set()
    fig, ax = plt.subplots(figsize=(max(8, 1.9 * len(groups)), 5.5))
    for si, (mode, when) in enumerate(series):
        for gi, (link, writer) in enumerate(groups):
            match = [c for c in cells if (c["link"], c["writer"], c["mode"], c.get("when", "now")) == (link, writer, mode, when)]
            if not match:
                continue
            c = match[0]
            x = gi - 0.4 + width * (si + 0.5)
            runs = [r["report"].get("downtimeMilliseconds") for r in c["runs"] if r["report"]["outcome"] == "handed over"]
            runs = [v for v in runs if v is not None]
            label = None
            if (mode, when) not in labelled:
                labelled.add((mode, when))
                label = f"{mode}" + (f", --when {when}" if when != "now" else "")
            hatch = "//" if when == "quiet" else None
            if runs:
                ax.bar(x, sorted(runs)[len(runs) // 2], width * 0.9, color=COLORS.get(mode, "grey"), alpha=0.6,
                       hatch=hatch, label=label)
                ax.scatter([x] * len(runs), runs, color="black", s=8, zorder=3)
            else:
                ax.text(x, 1, "aborted", rotation=90, ha="center", va="bottom", fontsize=7)
                if label:
                    ax.bar(x, 0, width * 0.9, color=COLORS.get(mode, "grey"), alpha=0.6, hatch=hatch, label=label)
            ax.hlines(c["downtimeTargetMilliseconds"], x - width / 2, x + width / 2, colors="black", linestyles="dotted")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\n{l}" for l, w in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("downtime, ms (log; dots: runs, bar: p50, dotted: target)")
    ax.set_title("memreplica bench migrate: downtime by writer, link and mode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=110)
    print(sys.argv[1])


if __name__ == "__main__":
    main()

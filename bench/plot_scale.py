#!/usr/bin/python3
"""Plots of a `memreplica bench scale --json` report: aggregate throughput
and sync time against the number of regions on one connection; sync and
1 % dirty-scan time against region size; sync time and CPU against the
number of mirrors of one region. Runs on Debian's python3-matplotlib.

usage: plot_scale.py OUT_PREFIX REPORT.json   (writes OUT_PREFIX-regions.png,
       OUT_PREFIX-sizes.png and OUT_PREFIX-fanout.png)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402


def plot_pair(path, title, xlabel, x, left, right, log2_x=False, left_floor=None):
    """One figure: `left` and `right` are (values, label, color, style)
    series on their own y axes, both from zero; `left_floor`, a series in
    `left`'s unit measured beside it (drawn grey, with a legend)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if left_floor is not None:
        values, label = left_floor
        ax.plot(x, values, "o:", color="#7f7f7f", label=label)
        ax.plot([], [], left[3], color=left[2], label=left[1])
        ax.legend(loc="upper left", fontsize="small")
    for axis, (values, label, color, style) in ((ax, left), (ax.twinx(), right)):
        axis.plot(x, values, style, color=color)
        axis.set_ylabel(label, color=color)
        axis.set_ylim(bottom=0)
    if log2_x:
        ax.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    prefix, report = sys.argv[1], json.load(open(sys.argv[2]))

    rows = report["regions"]
    if rows:
        plot_pair(prefix + "-regions.png", f"Regions of {rows[0]['bytesPerRegion'] >> 20} MiB on one connection",
                  "regions (log scale)", [r["regions"] for r in rows],
                  ([r["aggregateMegabytesPerSecond"] for r in rows], "aggregate initial sync, MB/s", "#1f77b4", "o-"),
                  ([r["lagP99Milliseconds"] for r in rows], "lag p99 of one write per region, ms", "#d62728", "s--"),
                  log2_x=True)

    rows = report["sizes"]
    if rows:
        plot_pair(prefix + "-sizes.png", "One region: initial sync and the scan finding 1 % dirty", "region size, GiB",
                  [r["regionBytes"] / (1 << 30) for r in rows],
                  ([r["syncSeconds"] for r in rows], "initial sync, s", "#1f77b4", "o-"),
                  ([r["scanMilliseconds"] for r in rows], "dirty scan, ms", "#2ca02c", "s--"),
                  left_floor=([r["allocateSeconds"] for r in rows], "the host making one copy's pages, s")
                  if all("allocateSeconds" in r for r in rows) else None)

    rows = report["fanOut"]
    if rows:
        plot_pair(prefix + "-fanout.png", f"Mirrors of one {rows[0]['regionBytes'] >> 20} MiB region", "mirrors",
                  [r["mirrors"] for r in rows],
                  ([r["syncSeconds"] for r in rows], "until all synced, s", "#1f77b4", "o-"),
                  ([r["cpuSecondsPerMirror"] for r in rows], "process CPU per mirror, s", "#9467bd", "s--"))


if __name__ == "__main__":
    main()

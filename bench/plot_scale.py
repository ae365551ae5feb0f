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


def two_axes(title, xlabel):
    fig, left = plt.subplots(figsize=(7, 4))
    left.set_title(title)
    left.set_xlabel(xlabel)
    return fig, left, left.twinx()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    prefix, report = sys.argv[1], json.load(open(sys.argv[2]))

    rows = report["regions"]
    if rows:
        n = [r["regions"] for r in rows]
        fig, left, right = two_axes(f"Regions of {rows[0]['bytesPerRegion'] >> 20} MiB on one connection",
                                    "regions (log scale)")
        left.plot(n, [r["aggregateMegabytesPerSecond"] for r in rows], "o-", color="#1f77b4")
        left.set_ylabel("aggregate initial sync, MB/s", color="#1f77b4")
        left.set_ylim(bottom=0)
        right.plot(n, [r["lagP99Milliseconds"] for r in rows], "s--", color="#d62728")
        right.set_ylabel("lag p99 of one write per region, ms", color="#d62728")
        right.set_ylim(bottom=0)
        left.set_xscale("log", base=2)
        fig.tight_layout()
        fig.savefig(prefix + "-regions.png", dpi=110)

    rows = report["sizes"]
    if rows:
        gib = [r["regionBytes"] / (1 << 30) for r in rows]
        fig, left, right = two_axes("One region: initial sync and the scan finding 1 % dirty", "region size, GiB")
        left.plot(gib, [r["syncSeconds"] for r in rows], "o-", color="#1f77b4")
        left.set_ylabel("initial sync, s", color="#1f77b4")
        left.set_ylim(bottom=0)
        right.plot(gib, [r["scanMilliseconds"] for r in rows], "s--", color="#2ca02c")
        right.set_ylabel("dirty scan, ms", color="#2ca02c")
        right.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(prefix + "-sizes.png", dpi=110)

    rows = report["fanOut"]
    if rows:
        m = [r["mirrors"] for r in rows]
        fig, left, right = two_axes(f"Mirrors of one {rows[0]['regionBytes'] >> 20} MiB region", "mirrors")
        left.plot(m, [r["syncSeconds"] for r in rows], "o-", color="#1f77b4")
        left.set_ylabel("until all synced, s", color="#1f77b4")
        left.set_ylim(bottom=0)
        right.plot(m, [r["cpuSecondsPerMirror"] for r in rows], "s--", color="#9467bd")
        right.set_ylabel("process CPU per mirror, s", color="#9467bd")
        right.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(prefix + "-fanout.png", dpi=110)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Plots of one `memreplica bench wan` report (its JSON): chunk-read p99
latency against loss, one panel per RTT, and bulk-sync throughput against
RTT. Called by `memreplica bench wan`; runs on Debian's python3-matplotlib.

usage: plot_wan.py REPORT.json OUT_PREFIX   (writes OUT_PREFIX-latency.png, OUT_PREFIX-throughput.png)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "quic": {"color": "#1f77b4", "marker": "o", "label": "QUIC (stream per region)"},
    "tcp": {"color": "#d62728", "marker": "s", "label": "TLS/TCP, one connection"},
    "tcp-per-region": {"color": "#2ca02c", "marker": "^", "label": "TLS/TCP, connection per region"},
}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    report = json.load(open(sys.argv[1]))
    prefix = sys.argv[2]
    summaries = report["summaries"]
    if not summaries:
        sys.exit("plot_wan.py: the report has no results")
    cc = summaries[0]["scenario"]["congestionControl"]
    rows = [s for s in summaries if s["scenario"]["congestionControl"] == cc]
    regions = max(s["scenario"]["regions"] for s in rows)
    latency_plot(rows, regions, cc, prefix + "-latency.png")
    throughput_plot(rows, regions, cc, prefix + "-throughput.png")
    print(f"{prefix}-latency.png {prefix}-throughput.png")


def latency_plot(rows, regions, cc, path):
    rows = [s for s in rows if s["scenario"]["regions"] == regions]
    rtts = sorted({s["scenario"]["rttMilliseconds"] for s in rows})
    fig, axes = plt.subplots(1, len(rtts), figsize=(max(6.5, 4.2 * len(rtts)), 4.2), squeeze=False)
    for ax, rtt in zip(axes[0], rtts):
        for transport, style in STYLE.items():
            points = sorted((s["scenario"]["lossPercent"], s["readP99Milliseconds"])
                            for s in rows if s["transport"] == transport and s["scenario"]["rttMilliseconds"] == rtt)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], **style)
        ax.axhline(rtt, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"RTT {rtt:g} ms")
        ax.set_xlabel("loss per direction (%)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("chunk-read p99 during bulk sync (ms)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Chunk-read p99 while {regions} region(s) sync in bulk\n({cc}; dotted line: the RTT)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def throughput_plot(rows, regions, cc, path):
    rows = [s for s in rows if s["scenario"]["regions"] == regions]
    losses = sorted({s["scenario"]["lossPercent"] for s in rows})
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for transport, style in STYLE.items():
        for i, loss in enumerate(losses):
            points = sorted((s["scenario"]["rttMilliseconds"], s["throughputMbps"])
                            for s in rows if s["transport"] == transport and s["scenario"]["lossPercent"] == loss)
            if not points:
                continue
            kwargs = dict(style)
            kwargs["label"] = f"{style['label']}, {loss:g} % loss"
            kwargs["linestyle"] = ["-", "--", "-.", ":"][i % 4]
            ax.plot([p[0] for p in points], [p[1] for p in points], **kwargs)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("RTT (ms)")
    ax.set_ylabel("bulk sync throughput (Mbit/s)")
    ax.set_title(f"Bulk sync of {regions} region(s), {cc}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

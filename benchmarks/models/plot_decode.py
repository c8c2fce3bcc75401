"""Plot bench_decode.py's JSON: hybrid/Transformer decode speedup against context, one line per batch.

Solid lines are the measured speedups, dashed lines (same colour) the traffic model's prediction
(the ratio of the bytes one step must move). Runs wherever matplotlib is installed (the GPU
image may lack it: copy the JSON back and draw it here).

    python benchmarks/models/plot_decode.py decode.json decode_speedup.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot_speedups(result: dict, path: str | Path) -> Path:
    """Draw `result["speedups"]` (bench_decode.py's output) to a PNG at `path`."""
    from forge_platform.tracking.plots import length_axis, pyplot, save_figure

    plt = pyplot()
    rows = result.get("speedups", [])
    if not rows:
        raise ValueError("no speedups in the JSON: the run needs both hybrid-2b-bench and transformer-2b-bench points")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    contexts = sorted({r["context"] for r in rows})
    for i, batch in enumerate(sorted({r["batch"] for r in rows})):
        line = sorted((r for r in rows if r["batch"] == batch), key=lambda r: r["context"])
        xs = [r["context"] for r in line]
        colour = f"C{i}"
        ax.plot(xs, [r["measured_speedup"] for r in line], "o-", color=colour, label=f"batch {batch} measured")
        ax.plot(xs, [r["predicted_speedup"] for r in line], "--", color=colour, label=f"batch {batch} traffic model")
    length_axis(ax, contexts)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("hybrid / Transformer decode speedup")
    ax.set_title(f"Decode speedup, {result.get('device', '?')} ({result.get('date', '?')})")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(plt, fig, path)


def main() -> None:
    """Read the JSON, write the PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="bench_decode.py --json output")
    parser.add_argument("png", help="where to write the plot")
    args = parser.parse_args()
    with open(args.json) as f:
        result = json.load(f)
    print(plot_speedups(result, args.png))


if __name__ == "__main__":
    main()

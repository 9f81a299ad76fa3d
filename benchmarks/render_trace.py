"""Render a fiberloader trace (Chrome trace-event JSON) to a PNG with matplotlib.

::

    python benchmarks/render_trace.py trace.json trace.png [--title "..."]

One row per track (greenlet or pool thread), in the trace's order; runs,
jobs, fetches and waits as bars in their own colours (nested slices drawn
thinner inside their parent); flow arrows from each wait to the fetch that
fetched its keys; time in ms from the first slice.  Reads what
``fiberloader.tracing.PerfettoTrace`` writes (complete ``X`` slices,
``B``/``E`` pairs too), with or without the closing ``]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make `fiberloader` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fiberloader.tracing import read_trace  # noqa: E402

COLOURS = {"run": "#55a868", "job": "#4c72b0", "fetch": "#dd8452", "wait": "#d9d9d9"}
OTHER = "#8172b3"
FLOW = "#c44e52"

Track = Tuple[Any, Any]  # (pid, tid)


def slices(events: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every slice as {track, name, cat, ts, dur}: X events, and B/E pairs matched per track."""
    found: List[Dict[str, Any]] = []
    open_: Dict[Track, List[Dict[str, Any]]] = {}
    for event in sorted((e for e in events if e.get("ph") in ("X", "B", "E")), key=lambda e: e["ts"]):
        track = (event.get("pid"), event.get("tid"))
        if event["ph"] == "X":
            found.append({"track": track, "name": event.get("name", ""), "cat": event.get("cat", ""),
                          "ts": event["ts"], "dur": event.get("dur", 0)})
        elif event["ph"] == "B":
            open_.setdefault(track, []).append(event)
        elif open_.get(track):
            begin = open_[track].pop()
            found.append({"track": track, "name": begin.get("name", ""), "cat": begin.get("cat", ""),
                          "ts": begin["ts"], "dur": event["ts"] - begin["ts"]})
    return found


def tracks(events: Sequence[Dict[str, Any]], found: Sequence[Dict[str, Any]]) -> List[Tuple[Track, str]]:
    """The tracks that have slices, with their names, in sort-index (else first-slice) order."""
    names: Dict[Track, str] = {}
    order: Dict[Track, float] = {}
    for event in events:
        if event.get("ph") != "M":
            continue
        track = (event.get("pid"), event.get("tid"))
        if event.get("name") == "thread_name":
            names[track] = event["args"]["name"]
        elif event.get("name") == "thread_sort_index":
            order[track] = event["args"]["sort_index"]
    first: Dict[Track, float] = {}
    for item in found:
        first.setdefault(item["track"], item["ts"])
    used = sorted(first, key=lambda track: (str(track[0]), order.get(track, float("inf")), first[track]))
    return [(track, names.get(track, f"tid {track[1]}")) for track in used]


def depths(found: Sequence[Dict[str, Any]]) -> List[int]:
    """How deep each slice is nested in its track (0: outermost)."""
    result = [0] * len(found)
    by_track: Dict[Track, List[int]] = {}
    for index in sorted(range(len(found)), key=lambda i: (found[i]["ts"], -found[i]["dur"])):
        by_track.setdefault(found[index]["track"], []).append(index)
    for indexes in by_track.values():
        stack: List[float] = []  # end times of the open ancestors
        for index in indexes:
            item = found[index]
            while stack and stack[-1] <= item["ts"]:
                stack.pop()
            result[index] = len(stack)
            stack.append(item["ts"] + item["dur"])
    return result


def render(trace: str, out: str, title: Optional[str] = None) -> None:
    events = read_trace(trace)
    found = slices(events)
    if not found:
        raise SystemExit(f"{trace} holds no slices")
    rows = tracks(events, found)
    row_of = {track: len(rows) - 1 - index for index, (track, _) in enumerate(rows)}  # first on top
    start = min(item["ts"] for item in found)
    end = max(item["ts"] + item["dur"] for item in found)
    span_ms = max((end - start) / 1000, 1e-3)

    height_in = 1.9 + 0.34 * len(rows)
    figure, axes = plt.subplots(figsize=(13, height_in))
    labels: List[Tuple[float, float, int, str]] = []  # (left, width, row, text) of the bars to label
    for item, depth in zip(found, depths(found)):
        row = row_of[item["track"]]
        wait = item["cat"] == "wait"
        height = 0.42 if wait else max(0.84 - 0.2 * depth, 0.3)  # a wait: a band inside its job
        left, width = (item["ts"] - start) / 1000, item["dur"] / 1000
        axes.barh(row, width, left=left, height=height, color=COLOURS.get(item["cat"], OTHER),
                  edgecolor="#555555" if wait else "white", linewidth=0.4, hatch="////" if wait else None,
                  zorder=2 + depth)
        if not wait:
            labels.append((left, width, row, item["name"]))

    flows: Dict[Any, Dict[str, Dict[str, Any]]] = {}
    for event in events:
        if event.get("ph") in ("s", "f") and "id" in event:
            flows.setdefault((event.get("cat"), event.get("name"), event["id"]), {})[event["ph"]] = event
    for pair in flows.values():
        if "s" not in pair or "f" not in pair:
            continue
        tail, head = pair["s"], pair["f"]
        tail_track, head_track = (tail.get("pid"), tail.get("tid")), (head.get("pid"), head.get("tid"))
        if tail_track not in row_of or head_track not in row_of:
            continue
        axes.annotate("", xy=((head["ts"] - start) / 1000, row_of[head_track]),
                      xytext=((tail["ts"] - start) / 1000, row_of[tail_track]),
                      arrowprops={"arrowstyle": "-|>", "color": FLOW, "alpha": 0.6, "lw": 0.8,
                                  "shrinkA": 0, "shrinkB": 0, "mutation_scale": 7},
                      zorder=20)

    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([name for _, name in reversed(rows)], fontsize=8)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlim(-span_ms * 0.01, span_ms * 1.01)
    axes.set_xlabel("time (ms)")
    axes.set_ylabel("track (greenlet / thread)")
    axes.grid(axis="x", color="#eeeeee", zorder=0)
    axes.set_title(title or f"fiberloader trace: {Path(trace).name}")
    legend = [Patch(color=COLOURS[cat], label=cat) for cat in ("run", "job", "fetch")]
    legend.append(Patch(facecolor=COLOURS["wait"], edgecolor="#555555", hatch="////", label="wait (parked)"))
    legend.append(Line2D([], [], color=FLOW, alpha=0.7, label="flow: wait -> fetch of its keys"))
    figure.legend(handles=legend, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.45 / height_in, 1, 1))

    # Labels cut to their bar's width, now that the axes' size in pixels is known.
    ms_per_pixel = (axes.get_xlim()[1] - axes.get_xlim()[0]) / axes.get_window_extent().width
    char_ms = 4.2 * ms_per_pixel * figure.dpi / 100  # ~4.2 px per character at 6.5 pt, 100 dpi
    for left, width, row, text in labels:
        room = int(width / char_ms) - 1
        if room < 4:
            continue
        if len(text) > room:
            text = text[: room - 1] + "\u2026"
        axes.text(left + char_ms * 0.5, row + 0.02, text, va="center", ha="left", fontsize=6.5, color="black",
                  bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.75, "linewidth": 0},
                  clip_on=True, zorder=15)
    figure.savefig(out, dpi=130)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Render a fiberloader trace (trace-event JSON) to a PNG.")
    parser.add_argument("trace", help="the JSON file written by fiberloader.tracing.PerfettoTrace")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--title", default=None, help="the plot's title (default: the file's name)")
    args = parser.parse_args(argv)
    render(args.trace, args.out, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())

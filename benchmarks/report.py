"""Numbers, tables and plots from the load generator's per-message rows.

Pure functions over the rows of :class:`benchmarks.frames.MessageResult` (as
dicts): :func:`summarize` gives the JSON summary, :func:`markdown` a table,
:func:`plot_latency` and :func:`plot_ttfc_timeline` small PNGs. matplotlib is
imported only by the plotting functions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "percentile", "plot_latency", "plot_ttfc_timeline", "summarize"]

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def distribution(values: Iterable[float | None]) -> dict[str, float | int | None]:
    data = sorted(v for v in values if v is not None)
    out: dict[str, float | int | None] = {"n": len(data)}
    for p in PERCENTILES:
        value = percentile(data, p)
        out[f"p{p}"] = None if value is None else round(value, 1)
    out["max"] = round(data[-1], 1) if data else None
    out["mean"] = round(sum(data) / len(data), 1) if data else None
    return out


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    wall_s: float,
    upstream_ttft_ms: float | None = None,
    upstream_stream_ms: float | None = None,
) -> dict[str, Any]:
    """The headline numbers of one run. ``upstream_ttft_ms`` (the fake LLM's
    own time to first token) and ``upstream_stream_ms`` (its whole stream)
    turn latencies into the server's overhead over the provider."""
    outcomes = Counter(str(r["outcome"]) for r in rows)
    errors = Counter(str(r["error"]) for r in rows if r["error"] is not None)
    completed = [r for r in rows if r["outcome"] == "completed"]
    acknowledged = [r for r in rows if r["accepted_ms"] is not None]
    summary: dict[str, Any] = {
        "messages": len(rows),
        "acknowledged": len(acknowledged),
        "completed": len(completed),
        "outcomes": dict(outcomes),
        "errors": dict(errors),
        "failed_share": round(1 - len(completed) / len(rows), 5) if rows else None,
        "throughput_msg_s": round(len(completed) / wall_s, 2) if wall_s > 0 else None,
        "deltas": sum(int(r["deltas"]) for r in rows),
        "chars": sum(int(r["chars"]) for r in rows),
        "persist_ms": distribution(r["accepted_ms"] for r in rows),
        "ttfc_ms": distribution(r["first_ms"] for r in rows),
        "full_reply_ms": distribution(r["done_ms"] for r in completed),
        "loss": {
            "gaps": sum(int(r["gaps"]) for r in rows),
            "lost_chars": sum(int(r["lost_chars"]) for r in rows),
            "overlaps": sum(int(r["overlaps"]) for r in rows),
            "duplicated_chars": sum(int(r["duplicated_chars"]) for r in rows),
            "content_mismatches": sum(1 for r in rows if r["mismatch"]),
        },
        "resumes": sum(int(r["resumes"]) for r in rows),
    }
    if upstream_ttft_ms is not None:
        summary["ttfc_overhead_ms"] = _shifted(summary["ttfc_ms"], upstream_ttft_ms)
    if upstream_stream_ms is not None:
        summary["full_reply_overhead_ms"] = _shifted(summary["full_reply_ms"], upstream_stream_ms)
    by_transport: dict[str, Any] = {}
    for transport in sorted({str(r["transport"]) for r in rows}):
        subset = [r for r in rows if r["transport"] == transport]
        by_transport[transport] = {
            "messages": len(subset),
            "completed": sum(1 for r in subset if r["outcome"] == "completed"),
            "ttfc_ms": distribution(r["first_ms"] for r in subset),
            "persist_ms": distribution(r["accepted_ms"] for r in subset),
        }
    summary["by_transport"] = by_transport
    slow = [r for r in rows if r["slow"]]
    if slow:
        summary["slow_readers"] = {
            "messages": len(slow),
            "completed": sum(1 for r in slow if r["outcome"] == "completed"),
            "full_reply_ms": distribution(
                r["done_ms"] for r in slow if r["outcome"] == "completed"
            ),
            "resumes": sum(int(r["resumes"]) for r in slow),
        }
        fast = [r for r in rows if not r["slow"]]
        summary["fast_readers"] = {
            "messages": len(fast),
            "ttfc_ms": distribution(r["first_ms"] for r in fast),
            "full_reply_ms": distribution(
                r["done_ms"] for r in fast if r["outcome"] == "completed"
            ),
        }
    return summary


def _shifted(dist: Mapping[str, Any], by: float) -> dict[str, float | None]:
    return {
        key: (None if value is None else round(value - by, 1))
        for key, value in dist.items()
        if key != "n"
    }


def lossless(summary: Mapping[str, Any]) -> bool:
    loss = summary["loss"]
    return not (loss["gaps"] or loss["overlaps"] or loss["content_mismatches"])


# --------------------------------------------------------------------------- markdown


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def markdown(result: Mapping[str, Any]) -> str:
    """One run as a Markdown table (what RESULTS.md and the console show)."""
    s = result["summary"]
    cfg = result["config"]
    conn = result["connections"]
    db = result.get("db_check") or {}
    loss = s["loss"]
    lines = [
        f"**{result['label']}**: {cfg['users']} users over {cfg['transport']}, think "
        f"{cfg['think_time']} s, {result['wall_s']:.0f} s, {s['messages']} messages",
        "",
        "| measure | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("persist (send → message.accepted), ms", s["persist_ms"]),
        ("first chunk (send → first delta), ms", s["ttfc_ms"]),
        ("full reply (send → terminal), ms", s["full_reply_ms"]),
    ]
    if "ttfc_overhead_ms" in s:
        rows.append(("first-chunk overhead over upstream TTFT, ms", s["ttfc_overhead_ms"]))
    if "full_reply_overhead_ms" in s:
        rows.append(("full-reply overhead over upstream stream, ms", s["full_reply_overhead_ms"]))
    for name, dist in rows:
        lines.append(
            f"| {name} | {_ms(dist['p50'])} | {_ms(dist['p90'])} | {_ms(dist['p99'])} "
            f"| {_ms(dist['max'])} |"
        )
    lines += [
        "",
        f"completed {s['completed']}/{s['messages']} ({s['throughput_msg_s']} msg/s); "
        f"errors {s['errors'] or 0}; lost chunks {loss['gaps']} ({loss['lost_chars']} chars), "
        f"duplicated {loss['overlaps']}, content mismatches {loss['content_mismatches']}; "
        f"dropped connections {conn['drops']} (resumed {s['resumes']}), "
        f"connect errors {conn['connect_errors']}",
    ]
    if db:
        lines.append(
            f"database check: {db.get('found', 0)}/{db.get('acknowledged', 0)} acknowledged "
            f"messages found, {db.get('missing', 0)} missing, "
            f"{db.get('reply_mismatches', 0)} stored replies differ"
        )
    gen = result.get("generator") or {}
    if gen:
        lines.append(
            f"load generator: {gen.get('workers')} process(es), event-loop lag p99 "
            f"{gen.get('loop_lag_ms_p99')} ms, max {gen.get('loop_lag_ms_max')} ms"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(
    series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *, title: str
) -> Path:
    """Cumulative distributions of persist, first chunk and full reply, one
    line style per series (e.g. sanic-chat vs floor)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    colors = {"persist": "tab:green", "first chunk": "tab:blue", "full reply": "tab:red"}
    styles = ["-", "--", ":", "-."]
    for index, (label, rows) in enumerate(series.items()):
        completed = [r for r in rows if r["outcome"] == "completed"]
        for name, values in (
            ("persist", [r["accepted_ms"] for r in rows]),
            ("first chunk", [r["first_ms"] for r in rows]),
            ("full reply", [r["done_ms"] for r in completed]),
        ):
            data = sorted(v for v in values if v is not None)
            if not data:
                continue
            ys = [(i + 1) / len(data) for i in range(len(data))]
            ax.plot(
                data,
                ys,
                styles[index % len(styles)],
                color=colors[name],
                linewidth=1.2,
                label=f"{label}: {name}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds after send (log)")
    ax.set_ylabel("share of messages")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ttfc_timeline(
    series: Mapping[str, tuple[Sequence[Mapping[str, Any]], Sequence[Sequence[float]]]],
    path: Path,
    *,
    title: str,
    bucket_s: float = 5.0,
) -> Path:
    """p50/p99 time to first chunk per ``bucket_s`` of send time, with the
    number of connected users on the right axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    users_ax = ax.twinx()
    palette = ["tab:blue", "tab:orange", "tab:purple", "tab:brown"]
    for index, (label, (rows, timeline)) in enumerate(series.items()):
        color = palette[index % len(palette)]
        buckets: dict[int, list[float]] = {}
        for r in rows:
            if r["first_ms"] is not None:
                buckets.setdefault(int(r["sent_at"] // bucket_s), []).append(r["first_ms"])
        xs = sorted(buckets)
        p50 = [percentile(sorted(buckets[x]), 50) for x in xs]
        p99 = [percentile(sorted(buckets[x]), 99) for x in xs]
        times = [(x + 0.5) * bucket_s for x in xs]
        ax.plot(times, p50, "-", color=color, linewidth=1.2, label=f"{label}: TTFC p50")
        ax.plot(times, p99, "--", color=color, linewidth=1.2, label=f"{label}: TTFC p99")
        if timeline:
            users_ax.plot(
                [t[0] for t in timeline],
                [t[1] for t in timeline],
                ":",
                color=color,
                alpha=0.6,
                label=f"{label}: users",
            )
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("time to first chunk, ms")
    users_ax.set_ylabel("connected users")
    ax.set_ylim(bottom=0)
    users_ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    handles = ax.get_legend_handles_labels()
    more = users_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=6, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- profiles


def profile_top(raw: str, *, limit: int = 25) -> str:
    """The hottest frames of a py-spy ``--format raw`` profile (collapsed
    stacks): own time, then time under each project frame (``sanic_chat/``)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        seen = set()
        for frame in frames:
            name = frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") else frame
            if name not in seen:
                seen.add(name)
                under[name] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples (active only)", "", "own time:"]
    lines += [f"{n / total * 100:5.1f}%  {frame}" for frame, n in own.most_common(limit)]
    lines += ["", "time under project frames:"]
    project = [(f, n) for f, n in under.most_common() if "sanic_chat/" in f]
    lines += [f"{n / total * 100:5.1f}%  {frame}" for frame, n in project[:limit]]
    return "\n".join(lines) + "\n"

"""Alternating timed rounds and honest ratios of their times.

Each round times every contender once on the same inputs, the order rotated
from round to round, and records the machine's 1-minute load. A ratio is
reported as the ratio of medians, its range over the two contenders' spreads
(one's min / the other's max .. max / min) and the min / median / max of the
per-round (paired) ratios; it is a win only when the whole range lies on one
side of 1.0x, otherwise a tie.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def summarize(values):
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def alternate(contenders: dict[str, Callable[[int], object]], rounds: int):
    """Run ``contenders[name](round)`` once per round each, rotating the order.

    Each callable does its own blocking (``jax.block_until_ready``). Its wall time
    and this process's CPU time (all threads) are recorded, unless it returns a
    dict with ``seconds`` and ``cpu_seconds`` (a contender timed in a worker
    process reports its own). Returns ``{"rounds": [{name: seconds, name + "_cpu":
    cpu seconds, "order": [...], "load": 1-min load}], "seconds": {name:
    summary}, "cpu_per_wall": {name: summary}, "load": summary}``.
    """
    names = list(contenders)
    records = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if (r // len(names)) % 2:
            order = order[::-1]
        record = {"order": order}
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            out = contenders[name](r)
            record[name] = time.perf_counter() - start
            record[name + "_cpu"] = time.process_time() - cpu
            if isinstance(out, dict) and "seconds" in out:
                record[name], record[name + "_cpu"] = out["seconds"], out["cpu_seconds"]
        record["load"] = os.getloadavg()[0]
        records.append(record)
    return {
        "rounds": records,
        "seconds": {n: summarize([rec[n] for rec in records]) for n in names},
        "cpu_per_wall": {
            n: summarize([rec[n + "_cpu"] / rec[n] for rec in records]) for n in names
        },
        "load": summarize([rec["load"] for rec in records]),
    }


def speedup(timing, fast: str, slow: str) -> dict:
    """How many times faster ``fast`` ran than ``slow`` (their seconds per round).

    ``of_medians`` = slow median / fast median; ``range`` = slow min / fast max ..
    slow max / fast min; ``paired`` = min / median / max of slow / fast per round.
    ``verdict`` is "faster" (range above 1.0x), "slower" (below) or "tie".
    """
    a, b = timing["seconds"][fast], timing["seconds"][slow]
    low, high = b["min"] / a["max"], b["max"] / a["min"]
    paired = [rec[slow] / rec[fast] for rec in timing["rounds"]]
    return {
        "of_medians": b["median"] / a["median"],
        "range": [low, high],
        "paired": summarize(paired),
        "verdict": "faster" if low > 1 else "slower" if high < 1 else "tie",
    }


def fmt_speedup(s: dict) -> str:
    """``**2.10x** (1.80 .. 2.40x; paired 1.9 / 2.1 / 2.3)``; bold only if not a tie."""
    head = f"{s['of_medians']:.2f}x"
    if s["verdict"] != "tie":
        head = f"**{head}**"
    p = s["paired"]
    return (
        f"{head} ({s['range'][0]:.2f} .. {s['range'][1]:.2f}x; paired "
        f"{p['min']:.2f} / {p['median']:.2f} / {p['max']:.2f}x; {s['verdict']})"
    )


def per_unit(timing, units: dict[str, float]):
    """``timing`` with every contender's seconds divided by its ``units`` (e.g.
    decisions per round), so contenders doing different amounts of work per
    round compare per unit; summaries recomputed, load kept."""
    rounds = []
    for rec in timing["rounds"]:
        rec = dict(rec)
        for name, n in units.items():
            rec[name] = rec[name] / n
        rounds.append(rec)
    return {
        "rounds": rounds,
        "seconds": {n: summarize([rec[n] for rec in rounds]) for n in units},
        "load": timing["load"],
    }

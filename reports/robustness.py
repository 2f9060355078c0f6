"""The Robustness section as the page shows it (templates/robustness.html.j2, macro `robustness`).

suites/robustness fuzzes each stack with malformed frames and keeps, per cell, a `fuzz` record
(labkit.fuzz.campaign.FuzzResult.as_dict): how much was sent, what the lab's kernel refused, how
the stack's memory grew, and the finding with its shrunk reproducer. A stack engineer reading
the page wants, per stack, two answers: did it live through the frames (and how many, so a
pass after 300 frames is not read as one after 300,000), and if not, the smallest thing that
breaks it and how to run that again. So a row per measured stack: the figures, both seeds (the
run's, which `--fuzz-seed` takes, and the stack's own, which the campaign derived from it), and
the finding with links to its reproducer pcap, the replay commands and its entry under Findings.

A carried-over cell holds a copy of the measured cell's record: the row of the variant that
was measured names the ones it stands for, and they get no row of their own (a copy read as a
second campaign would double the frames a reader thinks were sent).

Everything is decided here as plain strings and numbers; the template only writes them out,
autoescaped, so no problem text a stack or the oracle wrote becomes markup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from labkit.fuzz.memory import FLOOR, LIMIT, MB, PER_FRAMES

from .anchors import unique_anchor
from .perf import finite, order_key

CHECK = "robustness/test_malformed_frames.py::test_survives_malformed_frames"
MISSING = "—"
PROBLEM_CHARS = 300  # a problem as the row shows it; the finding's entry has the whole message
KINDS_SHOWN = 15  # kinds per stack in "what was sent"; the rest are summed
PROTOCOLS_SHOWN = 5  # protocols named in the breakdown's one-line summary
# The evidence pieces a finding leaves (suites/robustness): `<stack>.<piece>`. The stack part
# is not matched: the store keeps identical pieces once, under the first stack that had them.
PIECES = {"reproducer.pcap": "reproducer", "reproducer.pcap.gz": "reproducer", "replay.txt": "replay", "fuzz.txt": "record"}
ARROW = "→"

Link = Callable[[str], dict[str, str]]  # an evidence path -> {"href", "name"} relative to the page (reports.html)


def count(value: Any) -> int | None:
    number = finite(value)
    return None if number is None else int(number)


def thousands(value: Any) -> str:
    n = count(value)
    return MISSING if n is None else f"{n:,}"


def seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def plural(n: int, word: str, words: str = "") -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def anchor_of(stack: str, taken: set[str]) -> str:
    """The row's id: `robustness-<stack>`, so summary.md and a bug report can point at a stack's campaign."""
    return unique_anchor(f"robustness-{stack or 'no-stack'}", taken)


def _refused(refused: Any) -> dict[str, Any]:
    """Frames the lab's own kernel would not send (EMSGSIZE, EINVAL for a GSO header it rejects):
    they never reached the stack, so a reader must not count them as survived."""
    items = (
        sorted(((str(k), count(v) or 0) for k, v in refused.items()), key=lambda kv: (-kv[1], kv[0]))
        if isinstance(refused, Mapping)
        else []
    )
    total = sum(n for _, n in items)
    return {"total": f"{total:,}", "any": total > 0, "why": ", ".join(f"{k} {n:,}" for k, n in items)}


def _memory(memory: Any, rss: Any) -> dict[str, Any]:
    """Growth of the stack's RSS per 100k frames after its warm-up, judged as labkit.fuzz.memory
    judges it (over the limit and a real rise); "not judged" when the campaign fitted no line."""
    last = [finite(v) for v in rss] if isinstance(rss, list) else []
    rss_text = "" if not last or last[-1] is None else f"RSS {last[-1]:.1f} MB at the end"
    per, rise = (finite(memory.get("per_100k_mb")), finite(memory.get("rise_mb"))) if isinstance(memory, Mapping) else (None, None)
    if per is None:
        why = "too few frames after the warm-up to fit a line, or no process of its own to read"
        return {"judged": False, "text": "not judged", "rise": "", "rss": rss_text, "over": False, "why": why}
    over = per * MB > LIMIT and (rise or 0.0) * MB > FLOOR
    verdict = "over" if over else "within"
    return {
        "judged": True,
        "text": f"{per:.1f} MB",
        "rise": "" if rise is None else f"rose {rise:.1f} MB",
        "rss": rss_text,
        "over": over,
        "why": f"{verdict} the limit of {LIMIT // MB} MB per {PER_FRAMES:,} frames (with a rise over {FLOOR // MB} MB)",
    }


def _kinds(kinds: Any) -> dict[str, Any]:
    """What was sent, by the strategy's kind (`ipv4.options`): the top ones and per protocol.
    Counts are draws, not frames: a train of fragments is one draw."""
    items = (
        sorted(((str(k), count(v) or 0) for k, v in kinds.items()), key=lambda kv: (-kv[1], kv[0]))
        if isinstance(kinds, Mapping)
        else []
    )
    total = sum(n for _, n in items)
    protocols: dict[str, int] = {}
    for kind, n in items:
        protocols[kind.split(".", 1)[0]] = protocols.get(kind.split(".", 1)[0], 0) + n
    by_protocol = sorted(protocols.items(), key=lambda kv: (-kv[1], kv[0]))

    def share(n: int) -> str:
        return f"{n / total * 100:.0f} %" if total else MISSING

    rest = items[KINDS_SHOWN:]
    return {
        "draws": f"{total:,}",
        "count": len(items),
        "protocols": ", ".join(f"{p} {share(n)}" for p, n in by_protocol[:PROTOCOLS_SHOWN])
        + (", …" if len(by_protocol) > PROTOCOLS_SHOWN else ""),
        "top": [{"kind": k, "n": f"{n:,}", "share": share(n)} for k, n in items[:KINDS_SHOWN]],
        "rest": {"kinds": len(rest), "n": f"{sum(n for _, n in rest):,}", "share": share(sum(n for _, n in rest))}
        if rest
        else None,
    }


def _reproducer(finding: Mapping[str, Any]) -> str:
    """`1 frame (ipv4.options)`, or why there is none."""
    n = count(finding.get("reproducer_frames")) or 0
    kinds = [str(k) for k in finding.get("reproducer_kinds") or []]
    if n:
        return plural(n, "frame") + (f" ({', '.join(kinds)})" if kinds else "")
    if finding.get("kind") == "leak":
        return "none: a leak is the whole run's; replay the run with its seed"
    return "none: no fresh stack broke on the run's frames"


def _shrink(finding: Mapping[str, Any]) -> dict[str, str]:
    shrink = finding.get("shrink")
    if not isinstance(shrink, Mapping) or not shrink or not count(finding.get("reproducer_frames")):
        return {"text": "", "detail": ""}
    start, end = thousands(shrink.get("from_frames")), thousands(shrink.get("to_frames", finding.get("reproducer_frames")))
    fresh = count(shrink.get("candidates"))
    text = f"{start} {ARROW} {end} frames"
    if fresh is not None:
        text += f" on {plural(fresh, 'fresh stack')}"
    text += f" in {seconds(finite(shrink.get('seconds')))}"
    if shrink.get("capped"):
        text += ", budget spent (it may shrink further)"
    detail = []
    if (b := finite(shrink.get("bisection_seconds"))) is not None:
        detail.append(f"bisection {seconds(b)}")
    if (h := count(shrink.get("hypothesis_candidates"))) is not None:
        detail.append(f"{h:,} candidates from hypothesis's shrinker")
    return {"text": text, "detail": ", ".join(detail)}


def _evidence(paths: Iterable[str], link: Link) -> dict[str, dict[str, str] | None]:
    out: dict[str, dict[str, str] | None] = {"reproducer": None, "replay": None, "record": None}
    for path in paths:
        piece = PIECES.get(Path(path).name.partition(".")[2])
        if piece and out[piece] is None:
            out[piece] = link(path)
    return out


def _finding(cell: Mapping[str, Any], finding: Any, anchors: Mapping[str, str], link: Link) -> dict[str, Any] | None:
    if not isinstance(finding, Mapping):
        return None
    problems = [str(p) for p in finding.get("problems") or []]
    first = problems[0] if problems else "the campaign named no problem"
    needed = count(finding.get("history_needed"))
    notes = []
    if needed:
        notes.append(f"it needs {plural(needed, 'earlier batch', 'earlier batches')} before it")
    if count(finding.get("reproducer_frames")) and not finding.get("replays"):
        notes.append("the pcap alone did not break a fresh stack again (a live connection, or timing): replay the run")
    href = anchors.get(str(cell.get("nodeid", "")))
    return {
        "kind": str(finding.get("kind") or "?"),
        "problem": first[:PROBLEM_CHARS] + ("…" if len(first) > PROBLEM_CHARS else ""),
        "more": max(0, len(problems) - 1),
        "when": f"after batch {thousands(finding.get('batch'))} ({thousands(finding.get('frames_before'))} frames before it)",
        "reproducer": _reproducer(finding),
        "shrink": _shrink(finding),
        "notes": notes,
        "evidence": _evidence(cell.get("evidence") or [], link),
        "href": f"#{href}" if href else "",
    }


def _row(cell: Mapping[str, Any], anchor: str, carried: list[str], anchors: Mapping[str, str], link: Link) -> dict[str, Any]:
    fuzz: Mapping[str, Any] = cell["fuzz"]
    stack = str(cell.get("stack") or fuzz.get("stack") or "-")
    status = str(cell.get("status", ""))
    asked, took = finite(fuzz.get("seconds_asked")), finite(fuzz.get("seconds"))
    finding = _finding(cell, fuzz.get("finding"), anchors, link)
    return {
        "stack": stack,
        "anchor": anchor,
        "status": status,
        "cls": status.replace(" ", "-"),
        "verdict": "survived" if finding is None and status == "passed" else finding["kind"] if finding else status,
        "frames": thousands(fuzz.get("frames")),
        "batches": thousands(fuzz.get("batches")),
        "seconds": seconds(took),
        "asked": "" if asked is None else f"of {seconds(asked)} asked",
        "refused": _refused(fuzz.get("refused")),
        "memory": _memory(fuzz.get("memory"), fuzz.get("rss_mb")),
        "run_seed": str(fuzz.get("run_seed", MISSING)),
        "seed": str(fuzz.get("seed", MISSING)),
        "finding": finding,
        "reason": "" if finding or status == "passed" else str(cell.get("reason", "")).split("\n", 1)[0][:PROBLEM_CHARS],
        "carried": carried,
        "sent": _kinds(fuzz.get("kinds")),
    }


def _is_robustness(cell: Mapping[str, Any]) -> bool:
    return cell.get("check") == CHECK or isinstance(cell.get("fuzz"), Mapping)


def shape(results: Iterable[Mapping[str, Any]], anchors: Mapping[str, str], link: Link) -> dict[str, Any] | None:
    """The context the `robustness` macro lays out; None when no cell has a fuzz record.
    `anchors`: each reported cell's nodeid -> its finding's anchor (reports.findings.links);
    `link`: an evidence path as a link relative to the page."""
    cells = [c for c in results if _is_robustness(c)]
    measured = [c for c in cells if not c.get("carried_from") and isinstance(c.get("fuzz"), Mapping)]
    if not measured:
        return None
    stands_for: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        if c.get("carried_from"):
            stands_for.setdefault((str(c.get("check")), str(c["carried_from"])), []).append(str(c.get("stack")))
    taken: set[str] = set()
    rows = [
        _row(
            c,
            anchor_of(str(c.get("stack") or ""), taken),
            sorted(stands_for.get((str(c.get("check")), str(c.get("stack"))), [])),
            anchors,
            link,
        )
        for c in sorted(measured, key=lambda c: (order_key(str(c.get("stack") or "")), str(c.get("check"))))
    ]
    unfuzzed = [
        {
            "stack": str(c.get("stack") or "-"),
            "status": str(c.get("status", "")),
            "why": str(c.get("reason", "")).split("\n", 1)[0][:PROBLEM_CHARS],
        }
        for c in sorted(cells, key=lambda c: order_key(str(c.get("stack") or "")))
        if not c.get("carried_from") and not isinstance(c.get("fuzz"), Mapping)
    ]
    frames = sum(count(c["fuzz"].get("frames")) or 0 for c in measured)
    run_seeds = sorted({str(r["run_seed"]) for r in rows})
    return {
        "stacks": len(rows),
        "frames": f"{frames:,}",
        "run_seeds": ", ".join(run_seeds),
        "found": [
            {"stack": r["stack"], "href": f"#{r['anchor']}", "kind": r["finding"]["kind"], "problem": r["finding"]["problem"]}
            for r in rows
            if r["finding"]
        ],
        "rows": rows,
        "unfuzzed": unfuzzed,
        "limit_mb": LIMIT // MB,
    }


def summary_lines(results: Iterable[dict[str, Any]], link: Callable[[dict[str, Any]], str]) -> list[str]:
    """summary.md's lines for the robustness findings: one per measured stack that broke, as
    `link` names its cell, with what broke and the reproducer's size."""
    lines = []
    for c in sorted(results, key=lambda c: order_key(str(c.get("stack") or ""))):
        fuzz = c.get("fuzz")
        if c.get("carried_from") or not isinstance(fuzz, Mapping) or not isinstance(fuzz.get("finding"), Mapping):
            continue
        finding = fuzz["finding"]
        problems = [str(p) for p in finding.get("problems") or []]
        first = problems[0][:PROBLEM_CHARS] if problems else "no problem named"
        lines.append(
            f"- {link(c)}: {finding.get('kind') or '?'}, {first}; reproducer {_reproducer(finding)}"
            f" (seed {fuzz.get('run_seed', '?')})"
        )
    return lines

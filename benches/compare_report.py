#!/usr/bin/env python3
"""The reporting half of benches/compare.sh: reads the JSON lines written by the `compare` bench
binary (and the run's metadata written by the script), computes medians over repetitions, picks
each proxy's best worker count per workload, and renders Markdown:

- the full section for benches/RESULTS.md (summary table, every repetition, memory detail,
  machine load), written between `<!-- compare:begin -->` and `<!-- compare:end -->`;
- the summary table for README.md's Performance section, between the same markers.

Text outside the markers is left as it is. Standard library only.

    python3 benches/compare_report.py --results R.jsonl --meta META.json \
        [--results-md benches/RESULTS.md --readme README.md] [--print]
"""

import argparse
import json
import math
import re
import statistics
import sys

BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"

NAMES = {
    "direct": "direct",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "tether": "tether",
    "tether-log": "tether (log on)",
}
PROXIES = ["nginx", "haproxy", "tether", "tether-log"]
TESTS = {
    "http": "HTTP/1.1 keep-alive",
    "ws": "WebSocket echo",
    "h2": "HTTP/2 over TLS",
}


def is_num(v):
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def median(values):
    values = [v for v in values if is_num(v)]
    return statistics.median(values) if values else None


def fmt_int(v):
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_1(v):
    return "n/a" if v is None else f"{v:,.1f}"


def fmt_2(v):
    return "n/a" if v is None else f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def load(path):
    meta, runs, mems, reps, logs = {}, [], [], [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            kind = r.get("type")
            if kind == "meta":
                meta = r
            elif kind == "run" and r.get("test") == "log":
                logs.append(r)
            elif kind == "run":
                runs.append(r)
            elif kind == "mem":
                mems.append(r)
            elif kind == "rep":
                reps.append(r)
    return meta, runs, mems, reps, logs


class Throughput:
    """Medians per (system, workers, test) and the best worker count per (system, test)."""

    def __init__(self, runs):
        self.by = {}
        for r in runs:
            key = (r["system"], r.get("workers", 0), r["test"])
            self.by.setdefault(key, []).append(r)

    def values(self, system, workers, test, field):
        """Per repetition (sorted by rep): the value, or None where that run failed."""
        rows = sorted(self.by.get((system, workers, test), []), key=lambda r: r["rep"])
        return [(r["rep"], None if "error" in r else r.get(field)) for r in rows]

    def med(self, system, workers, test, field):
        return median([v for _, v in self.values(system, workers, test, field)])

    def workers(self, system, test):
        return sorted({w for (s, w, t) in self.by if s == system and t == test})

    def best(self, system, test):
        """The worker count with the highest median rate, or None."""
        scored = [(self.med(system, w, test, "rate"), w) for w in self.workers(system, test)]
        scored = [(m, w) for m, w in scored if m is not None]
        return max(scored)[1] if scored else None

    def best_value(self, system, test, field):
        w = self.best(system, test)
        return (None, None) if w is None else (self.med(system, w, test, field), w)

    def errors(self):
        return [r for rows in self.by.values() for r in rows if "error" in r]


class Memory:
    """Bytes per idle tunnel: growth of the proxy's resident set over its baseline, divided by N."""

    def __init__(self, mems):
        self.by = {}
        for m in mems:
            self.by.setdefault((m["system"], m["scheme"]), []).append(m)

    @staticmethod
    def per_tunnel(m):
        if not m.get("points"):
            return {}
        base = m["base_kib"]
        return {p["n"]: (p["rss_kib"] - base) * 1024 / p["n"] for p in m["points"]}

    @staticmethod
    def slopes(m):
        if not m.get("points"):
            return {}
        pts = m["points"]
        out = {}
        for a, b in zip(pts, pts[1:]):
            out[(a["n"], b["n"])] = (b["rss_kib"] - a["rss_kib"]) * 1024 / (b["n"] - a["n"])
        return out

    @staticmethod
    def span_slope(m):
        """Bytes per tunnel between the smallest and the largest N: what one more tunnel costs,
        without the fixed growth (allocator arenas, tables) that the first tunnels bring."""
        pts = m.get("points") or []
        if len(pts) < 2:
            return None
        a, b = pts[0], pts[-1]
        return (b["rss_kib"] - a["rss_kib"]) * 1024 / (b["n"] - a["n"])

    def headline_slope(self, system, scheme):
        """Median over repetitions of the slope from the smallest to the largest N."""
        return median([self.span_slope(m) for m in self.runs(system, scheme)])

    def runs(self, system, scheme):
        return sorted(self.by.get((system, scheme), []), key=lambda m: m["rep"])

    def headline(self, system, scheme, n):
        """Median over repetitions of bytes per tunnel at N tunnels (None: not measured there)."""
        return median([self.per_tunnel(m).get(n) for m in self.runs(system, scheme)])

    def workers(self, system, scheme):
        runs = self.runs(system, scheme)
        return runs[0].get("workers") if runs else None


def summary_table(tp, mem, meta):
    """The table of the issue: one row per figure, ratios against the better of nginx and HAProxy."""
    have = set(meta.get("systems", []))

    def cell(system, test, field, fmt, with_workers=True):
        if system not in have:
            return "not run"
        v, w = tp.best_value(system, test, field)
        if v is None:
            return "n/a"
        if system == "direct" or not with_workers:
            return fmt(v)
        return f"{fmt(v)} ({w}w)"

    def best_of(test, field, better):
        vals = [tp.best_value(s, test, field)[0] for s in ("nginx", "haproxy") if s in have]
        vals = [v for v in vals if v is not None]
        return better(vals) if vals else None

    def tether(test, field):
        return tp.best_value("tether", test, field)[0]

    rows = []
    head = "| figure | direct | nginx best | HAProxy best | tether best | tether (log on) | tether ÷ better of nginx, HAProxy | target |"
    rows.append(head)
    rows.append("|---|---:|---:|---:|---:|---:|---:|---|")

    def verdict(r, ok):
        if r is None:
            return ""
        return " (met)" if ok(r) else " (not met)"

    def add(label, test, field, fmt, better, target, ok, direct=True):
        r = ratio(tether(test, field), best_of(test, field, better))
        cells = [cell("direct", test, field, fmt) if direct else "—"]
        cells += [cell(s, test, field, fmt) for s in PROXIES]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {fmt_ratio(r)} | {target}{verdict(r, ok) if ok else ''} |")

    add("HTTP/1.1 keep-alive req/s (wrk -t1 -c64)", "http", "rate", fmt_int, max, "≥ 1.10x", lambda r: r >= 1.1)
    add("proxy CPU µs per request", "http", "proxy_cpu_us", fmt_1, min, "≤ 0.80x", lambda r: r <= 0.8, direct=False)

    def lat(system):
        if system not in have:
            return "not run"
        p50, w = tp.best_value(system, "http", "p50_ms")
        p99, _ = tp.best_value(system, "http", "p99_ms")
        if p50 is None:
            return "n/a"
        return f"{fmt_2(p50)} / {fmt_2(p99)}"

    r50 = ratio(tether("http", "p50_ms"), best_of("http", "p50_ms", min))
    r99 = ratio(tether("http", "p99_ms"), best_of("http", "p99_ms", min))
    rows.append(
        "| p50 / p99 latency, ms (same runs) | "
        + " | ".join(lat(s) for s in ["direct"] + PROXIES)
        + f" | {fmt_ratio(r50)} / {fmt_ratio(r99)} | — |"
    )
    add("WebSocket echo msg/s (64 connections, 16 B)", "ws", "rate", fmt_int, max, "≥ 1.10x", lambda r: r >= 1.1)
    add("proxy CPU µs per WS message", "ws", "proxy_cpu_us", fmt_1, min, "≤ 0.90x", lambda r: r <= 0.9, direct=False)
    # h2: the target is HAProxy's figure; the ratio column stays "against the better of the two".
    h2_vs_haproxy = ratio(tether("h2", "rate"), tp.best_value("haproxy", "h2", "rate")[0])
    r = ratio(tether("h2", "rate"), best_of("h2", "rate", max))
    rows.append(
        "| HTTP/2 over TLS req/s (h2load -c8 -m8) | — | "
        + " | ".join(cell(s, "h2", "rate", fmt_int) for s in PROXIES)
        + f" | {fmt_ratio(r)} | ≥ HAProxy: {fmt_ratio(h2_vs_haproxy)}"
        + (verdict(h2_vs_haproxy, lambda x: x >= 1.0) if h2_vs_haproxy is not None else "")
        + " |"
    )
    limits = {"ws": 2048, "wss": 6000}
    for scheme in ("ws", "wss"):
        cells = []
        vals = {}
        ns = sorted(meta.get("tunnels") or [0])
        for s in PROXIES:
            if s == "tether-log":
                cells.append("—")
                continue
            v = mem.headline_slope(s, scheme)
            vals[s] = v
            cells.append(fmt_int(v) if v is not None else "failed" if mem.runs(s, scheme) else "not run")
        others = [vals.get(s) for s in ("nginx", "haproxy") if vals.get(s) is not None]
        r = ratio(vals.get("tether"), min(others)) if others else None
        t = vals.get("tether")
        met = "" if t is None else (" (met)" if t <= limits[scheme] else " (not met)")
        label = f"bytes per idle {scheme} tunnel" + (f" (slope {ns[0]:,} → {ns[-1]:,})" if len(ns) > 1 else "")
        rows.append(f"| {label} | — | " + " | ".join(cells) + f" | {fmt_ratio(r)} | ≤ {limits[scheme]:,} B{met} |")
    return "\n".join(rows)


def repetitions_tables(tp, meta):
    reps = meta.get("reps", 1)
    out = []
    cols = " | ".join(f"rep {i + 1}" for i in range(reps))
    figures = [
        ("http", "rate", "req/s", fmt_int),
        ("http", "proxy_cpu_us", "proxy CPU µs/req", fmt_1),
        ("http", "p50_ms", "p50 ms", fmt_2),
        ("http", "p99_ms", "p99 ms", fmt_2),
        ("ws", "rate", "msg/s", fmt_int),
        ("ws", "proxy_cpu_us", "proxy CPU µs/msg", fmt_1),
        ("h2", "rate", "req/s", fmt_int),
        ("h2", "proxy_cpu_us", "proxy CPU µs/req", fmt_1),
    ]
    out.append(
        "*other work* is the CPU the rest of the machine used during the measured windows (median), in cores out of "
        "2: everything but the proxy, the backend and the load generator (mostly other builds on this shared machine)."
    )
    current = None
    for test, field, label, fmt in figures:
        if test != current:
            current = test
            out.append(f"\n**{TESTS[test]}**\n")
        load_col = field == "rate"
        out.append(f"| {label} | workers | {cols} | median |" + (" other work, cores |" if load_col else ""))
        out.append("|---|---:|" + "---:|" * reps + "---:|" + ("---:|" if load_col else ""))
        for system in ["direct"] + PROXIES:
            for w in tp.workers(system, test):
                if system == "direct" and field == "proxy_cpu_us":
                    continue
                vals = dict(tp.values(system, w, test, field))
                cells = [fmt(vals.get(i)) if vals.get(i) is not None else "failed" if i in vals else "—" for i in range(reps)]
                best = " **best**" if system != "direct" and tp.best(system, test) == w else ""
                workers = "—" if system == "direct" else str(w)
                other = f" {fmt_2(tp.med(system, w, test, 'other_cores'))} |" if load_col else ""
                out.append(
                    f"| {NAMES[system]}{best} | {workers} | "
                    + " | ".join(cells)
                    + f" | {fmt(tp.med(system, w, test, field))} |{other}"
                )
        out.append("")
    return "\n".join(out)


def memory_tables(mem, meta):
    out = []
    reps = meta.get("reps", 1)
    ns = meta.get("tunnels", [])
    out.append("| proxy | scheme | workers | baseline MiB | " + " | ".join(f"B/tunnel at {n:,}" for n in ns)
               + " | " + " | ".join(f"slope {a:,}→{b:,} B" for a, b in zip(ns, ns[1:])) + " |")
    out.append("|---|---|---:|---:|" + "---:|" * (len(ns) + max(len(ns) - 1, 0)))
    for system in ("nginx", "haproxy", "tether"):
        for scheme in ("ws", "wss"):
            runs = mem.runs(system, scheme)
            if not runs:
                continue
            per = [mem.per_tunnel(m) for m in runs]
            slopes = [mem.slopes(m) for m in runs]
            base = median([m.get("base_kib") for m in runs])

            def cellv(values):
                vals = [v for v in values]
                shown = " / ".join("failed" if v is None else fmt_int(v) for v in vals)
                med = median(vals)
                return f"**{fmt_int(med)}**" + (f" ({shown})" if reps > 1 else "")

            cells = [cellv([p.get(n) for p in per]) for n in ns]
            cells += [cellv([s.get((a, b)) for s in slopes]) for a, b in zip(ns, ns[1:])]
            out.append(
                f"| {NAMES[system]} | {scheme} | {mem.workers(system, scheme)} | "
                + (fmt_1(base / 1024) if base is not None else "n/a")
                + " | "
                + " | ".join(cells)
                + " |"
            )
    errors = [m for ms in mem.by.values() for m in ms if "error" in m]
    for m in errors:
        out.append(f"\nFailed: {m['system']} {m['scheme']} rep {m['rep'] + 1}: {m['error'].splitlines()[0]}")
    return "\n".join(out)


def load_table(runs, reps_rows):
    """How busy the machine was, per repetition, from the measured windows."""
    out = ["| repetition | order | load average at start → end | other work, cores (median of windows) | steal, cores |",
           "|---:|---|---|---:|---:|"]
    for rep in sorted(reps_rows, key=lambda r: r["rep"]):
        windows = [r for r in runs if r["rep"] == rep["rep"] and "error" not in r]
        other = median([r.get("other_cores") for r in windows])
        steal = median([r.get("steal_cores") for r in windows])
        out.append(
            f"| {rep['rep'] + 1} | {', '.join(NAMES.get(s, s) for s in rep['order'])} | "
            f"{rep['loadavg_start']} → {rep['loadavg_end']} | {fmt_2(other)} | {fmt_2(steal)} |"
        )
    return "\n".join(out)


def cost_table(tp):
    """Where the CPU went in each best configuration: proxy, backend and load generator, per op."""
    out = ["| workload | system (best workers) | proxy µs/op | of which kernel | backend µs/op | load generator µs/op | proxy cores | load generator cores |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for test in ("http", "ws", "h2"):
        for system in ["direct"] + PROXIES:
            w = tp.best(system, test)
            if w is None:
                continue
            g = lambda f: tp.med(system, w, test, f)  # noqa: E731
            label = NAMES[system] + ("" if system == "direct" else f" ({w}w)")
            out.append(
                f"| {TESTS[test]} | {label} | {'—' if system == 'direct' else fmt_1(g('proxy_cpu_us'))} | "
                f"{'—' if system == 'direct' else fmt_1(g('proxy_kernel_us'))} | "
                f"{fmt_1(g('backend_cpu_us'))} | {fmt_1(g('client_cpu_us'))} | "
                f"{'—' if system == 'direct' else fmt_2(g('proxy_cores'))} | {fmt_2(g('client_cores'))} |"
            )
    return "\n".join(out)


def header(meta, run_meta):
    m = run_meta
    lines = [
        f"Command: `{m.get('command', 'benches/compare.sh')}` — {m.get('date', '?')}, commit `{m.get('commit', '?')}`"
        f" (branch `{m.get('branch', '?')}`), {meta.get('reps', '?')} repetition(s), run time {m.get('duration', '?')}.",
        "",
        f"Machine: {m.get('nproc', '?')} cores ({m.get('cpu', '?')}), Linux {m.get('kernel', '?')}, {m.get('memory', '?')};"
        " the cores are shared with other work (see *Machine load* below), so compare ratios within this run."
        f" Versions: {m.get('nginx', '?')}, {m.get('haproxy', '?')}, {m.get('wrk', '?')}, {m.get('h2load', '?')};"
        f" tether {m.get('tether', '?')} (release build, {m.get('rustc', '?')}).",
        "",
        f"Per measured window: {meta.get('seconds', '?'):g} s after a {meta.get('warmup', '?'):g} s warm-up; "
        f"{meta.get('backends', 3)} hyper backends in one backend process; "
        f"WebSocket client: {meta.get('connections', 64)} connections, {meta.get('ws_payload', 16)}-byte binary messages, closed loop, one thread; "
        f"h2load -t1 -c{meta.get('h2_clients', 8)} -m{meta.get('h2_streams', 8)}; "
        f"idle tunnels at N = {', '.join(f'{n:,}' for n in meta.get('tunnels', []))} "
        f"({meta.get('idle', 2):g} s idle before each reading, {meta.get('mem_workers', 1)} worker).",
    ]
    if meta.get("skipped"):
        lines.append(f"\nNot installed, skipped: {', '.join(meta['skipped'])}.")
    return "\n".join(lines)


RESULTS_NOTES = """\
How to read it. *best* is the worker count (1 or 2: nginx `worker_processes`, HAProxy `nbthread`,
tether `TOKIO_WORKER_THREADS`) with the higher median throughput for that workload; the CPU and
latency rows are those of the same configuration. Figures are medians over the repetitions (every
repetition is listed below). Proxy CPU is utime + stime from `/proc/PID/stat` of all the proxy's
processes (nginx master and workers; every thread) read before and after the measured window,
divided by the requests (or echoed messages) completed in it; on this kernel softirq time is
charged to the task that was running, so loopback TCP work done by the proxy counts as its CPU.
A WebSocket "message" is one 16-byte message sent and echoed back (two relays through the proxy).
Memory: growth of the proxy's resident set (all its processes) over its baseline with N tunnels
open and idle, divided by N. The summary row is the slope between the smallest and the largest N
(what one more tunnel costs); bytes per tunnel at each N and the slopes between neighbouring N
values are in the detail table.

Equivalent work: every proxy balances round-robin over the same 3 backends, keeps idle upstream
connections, supports the WebSocket upgrade, logs nothing (except the *log on* column: tether's
JSON access log, one line per request, written to a file outside the directory of its config
file, which tether watches for reloads) and inserts a sticky cookie named `SRV`
on every response to a request without one (wrk, h2load and the WebSocket client never send it):
tether with `affinity.cookie` (HMAC-signed value); HAProxy with `cookie SRV insert indirect nocache
httponly`; nginx, which has no sticky cookie in its free version, with a `map $cookie_SRV` choosing
a one-server upstream (the round-robin upstream when absent) and `add_header Set-Cookie
"SRV=<id mapped from $upstream_addr>; Path=/; HttpOnly" always`, so it too reads the cookie, routes
by it and names the answering server on every response. nginx's `keepalive_requests` is raised
(its default of 1,000 would close every connection, h2 included, after 1,000 requests). The exact
configs are generated in `benches/common/mod.rs`."""


def load_warning(runs):
    """A caveat when other work took a large share of the machine during the measured windows."""
    other = median([r.get("other_cores") for r in runs if "error" not in r])
    if other is None or other < 0.5:
        return ""
    return (
        f"**Busy machine:** other work used a median {other:.2f} of the 2 cores during the measured windows, so "
        "the throughput and latency figures mostly reflect the CPU share each run happened to get; proxy CPU per "
        "request or message (and memory) are the steadier figures here."
    )


def render_results(meta, run_meta, tp, mem, runs, reps_rows, logs):
    warning = load_warning(runs)
    parts = [
        BEGIN,
        "## Side by side: `benches/compare.sh` (generated; do not edit by hand)",
        "",
        header(meta, run_meta),
        "",
        summary_table(tp, mem, meta),
        "",
    ]
    if warning:
        parts += [warning, ""]
    parts += [
        RESULTS_NOTES,
        "",
        "### Every repetition",
        repetitions_tables(tp, meta),
        "### Idle tunnel memory",
        "",
        "Bytes per tunnel at each N (median, then each repetition), and the slope between N values "
        "(the marginal cost of one more tunnel).",
        "",
        memory_tables(mem, meta),
        "",
        "### Where the CPU went (best configurations, medians)",
        "",
        "The load generator (wrk, h2load, or the WebSocket client) and the backend share the same 2 cores "
        "with the proxy; *direct* shows what the load generator and backend reach without a proxy. "
        "*of which kernel* is the proxy's system time (stime): its system calls and the loopback TCP work "
        "the kernel charges to it, which every proxy pays for the same bytes moved.",
        "",
        cost_table(tp),
        "",
    ]
    sizes = [r.get("log_bytes") for r in logs if r["system"] == "tether-log"]
    if median(sizes):
        parts += [
            f"tether's access log (log on) grew by a median {fmt_int(median(sizes) / 1e6)} MB per variant run "
            "(the http, ws and h2 windows and their warm-ups), so it was really written.",
            "",
        ]
    parts += ["### Machine load during the run", "", load_table(runs, reps_rows), ""]
    errors = tp.errors()
    if errors:
        parts += ["### Failed measurements", ""]
        for r in errors:
            first = (r.get("error") or "").strip().splitlines()
            parts.append(f"- rep {r['rep'] + 1}, {NAMES.get(r['system'], r['system'])} {r.get('workers')}w, {r['test']}: {first[0] if first else ''}")
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def render_readme(meta, run_meta, tp, mem, runs):
    warning = load_warning(runs)
    return "\n".join([
        BEGIN,
        f"Generated by `{run_meta.get('command', 'benches/compare.sh')}` ({run_meta.get('date', '?')}, commit "
        f"`{run_meta.get('commit', '?')}`, {meta.get('reps', '?')} repetitions, medians; {run_meta.get('nproc', '?')} shared cores; "
        f"{run_meta.get('nginx', 'nginx')}, {run_meta.get('haproxy', 'HAProxy')}). *best* = the better of 1 or 2 "
        "workers; ratios are tether against the better of nginx and HAProxy. Method, every repetition and "
        "equivalence of the configs: [`benches/RESULTS.md`](benches/RESULTS.md).",
        "",
        summary_table(tp, mem, meta),
    ] + (["", warning] if warning else []) + [END])


def replace_block(path, block, fallback_after=None):
    """Replace the text between the markers in `path` (inclusive) by `block`; when the file has no
    markers yet, insert the block after the first line matching `fallback_after` (a regex)."""
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        start = text.index(BEGIN)
        end = text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    elif fallback_after:
        m = re.search(fallback_after, text, re.M)
        if not m:
            raise SystemExit(f"{path}: no markers and no place to insert them")
        # After the paragraph that follows the matched line.
        para_end = text.find("\n\n", m.end())
        pos = len(text) if para_end < 0 else para_end + 2
        text = text[:pos] + block + "\n\n" + text[pos:]
    else:
        raise SystemExit(f"{path}: markers {BEGIN} / {END} not found")
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--results-md")
    ap.add_argument("--readme")
    ap.add_argument("--report", help="also write the RESULTS section here")
    ap.add_argument("--print", action="store_true", help="print the summary table")
    args = ap.parse_args()
    meta, runs, mems, reps_rows, logs = load(args.results)
    with open(args.meta) as f:
        run_meta = json.load(f)
    tp = Throughput(runs)
    mem = Memory(mems)
    results = render_results(meta, run_meta, tp, mem, runs, reps_rows, logs)
    if args.report:
        with open(args.report, "w") as f:
            f.write(results + "\n")
    if args.results_md:
        replace_block(args.results_md, results, fallback_after=r"^# Measured results")
    if args.readme:
        replace_block(args.readme, render_readme(meta, run_meta, tp, mem, runs))
    if args.print:
        print(summary_table(tp, mem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

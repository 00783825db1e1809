#!/usr/bin/env bash
# benches/compare.sh: tether side by side with nginx and HAProxy, one command.
#
#   benches/compare.sh                 # full run: 3 repetitions (about 20 minutes on 2 cores)
#   benches/compare.sh --quick         # smoke run: 1 repetition, 2 s windows, 500/1,000 tunnels
#   benches/compare.sh --reps 5 --seconds 15 --tunnels 2000,5000,9000
#
# What it does:
#  1. installs nginx, HAProxy, wrk and h2load (Debian packages nginx, haproxy, wrk,
#     nghttp2-client) with apt-get when one is missing (through sudo when not root);
#  2. builds tether in release mode and the `compare` bench binary (benches/compare.rs);
#  3. runs that binary, which starts one backend process (3 hyper backends: small JSON answers,
#     WebSocket echo on /ws) and, for every repetition, in an order rotated each time:
#     straight to the backend ("direct"), then nginx, HAProxy, tether and tether with its JSON
#     access log on (to a file), each at 1 and at 2 workers (nginx worker_processes, HAProxy
#     nbthread, tether TOKIO_WORKER_THREADS), all with equivalent configs (round-robin over the
#     3 backends, sticky cookie SRV inserted on every response, WebSocket upgrades, upstream
#     keep-alive, access logs off; see benches/common/mod.rs). For each it measures
#       - HTTP/1.1 keep-alive: wrk -t1 -c64, req/s, p50/p99 latency;
#       - WebSocket echo: 64 connections, closed loop, 16-byte messages (Rust client, one thread);
#       - HTTP/2 over TLS: h2load -t1 -c8 -m8 (64 streams in flight over 8 connections);
#     with the proxy's CPU per request/message (utime+stime of all its processes from
#     /proc/PID/stat around the measured window, divided by the operations completed), and the
#     backend's, the load generator's and the rest of the machine's CPU in the same window.
#     Then, per proxy (1 worker) and scheme (ws, wss), idle tunnels are opened up to each N and
#     the proxy's resident set is read: bytes per tunnel and the slope between N values;
#  4. writes the report (benches/compare_report.py): medians over repetitions, each proxy at its
#     best worker count, ratios against the better of nginx and HAProxy, every repetition listed,
#     into benches/RESULTS.md and README.md between <!-- compare:begin --> and
#     <!-- compare:end --> (the rest of both files is left alone). --quick writes only under
#     target/compare/ unless --write is given.
#
# Options (each also settable through the environment variable in brackets):
#   --quick              1 repetition, 2 s windows, 1 s warm-up, tunnels 500,1000, 1 s idle
#   --reps N             repetitions [COMPARE_REPS, default 3]
#   --seconds S          measured window per workload [COMPARE_SECONDS, default 8]
#   --warmup S           warm-up before each window [COMPARE_WARMUP, default 2]
#   --tunnels LIST       idle tunnel counts, at most 9000 [COMPARE_TUNNELS, default 2000,5000,9000]
#   --systems LIST       of direct,nginx,haproxy,tether,tether-log [COMPARE_SYSTEMS, all]
#   --workers LIST       worker counts to try [COMPARE_WORKERS, default 1,2]
#   --tests LIST         of http,ws,h2,mem [COMPARE_TESTS, all]
#   --write / --no-write update (or not) benches/RESULTS.md and README.md
#   --no-install         do not apt-get anything (missing proxies are skipped, missing tools fail)
#   --budget SECONDS     hard limit for the measuring binary [COMPARE_BUDGET, derived from the above]
#   --report-only DIR    measure nothing: render the report again from a stored run
#                        (target/compare/<date>), writing RESULTS.md/README.md unless --no-write
#
# Every step is bounded: apt-get, the builds and the measuring binary run under `timeout`; the
# binary bounds each wait itself (proxy start-up, each load run, tunnel opening). Every process it
# starts runs in its own process group and is stopped by that group id (never by name); if the
# binary itself is killed, the groups it recorded in a pid file are stopped here. Traffic stays on
# 127.0.0.1. Raw results: target/compare/<date>/results.jsonl.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SCRIPT_START=$(date +%s)
COMMAND="benches/compare.sh${*:+ $*}"

QUICK=0
WRITE=""
INSTALL=1
REPS=${COMPARE_REPS:-}
SECONDS_=${COMPARE_SECONDS:-}
WARMUP=${COMPARE_WARMUP:-}
TUNNELS=${COMPARE_TUNNELS:-}
IDLE=${COMPARE_IDLE:-}
SYSTEMS=${COMPARE_SYSTEMS:-direct,nginx,haproxy,tether,tether-log}
WORKERS=${COMPARE_WORKERS:-1,2}
TESTS=${COMPARE_TESTS:-http,ws,h2,mem}
BUDGET=${COMPARE_BUDGET:-}
REPORT_ONLY=""

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --seconds) SECONDS_=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --tunnels) TUNNELS=$2; shift ;;
        --systems) SYSTEMS=$2; shift ;;
        --workers) WORKERS=$2; shift ;;
        --tests) TESTS=$2; shift ;;
        --write) WRITE=1 ;;
        --no-write) WRITE=0 ;;
        --no-install) INSTALL=0 ;;
        --budget) BUDGET=$2; shift ;;
        --report-only) REPORT_ONLY=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    : "${REPS:=1}" "${SECONDS_:=2}" "${WARMUP:=1}" "${TUNNELS:=500,1000}" "${IDLE:=1}" "${WRITE:=0}"
else
    : "${REPS:=3}" "${SECONDS_:=8}" "${WARMUP:=2}" "${TUNNELS:=2000,5000,9000}" "${IDLE:=2}" "${WRITE:=1}"
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -n "$REPORT_ONLY" ]; then
    [ -s "$REPORT_ONLY/results.jsonl" ] && [ -s "$REPORT_ONLY/meta.json" ] \
        || { echo "compare.sh: no results.jsonl and meta.json in $REPORT_ONLY" >&2; exit 1; }
    args=(--results "$REPORT_ONLY/results.jsonl" --meta "$REPORT_ONLY/meta.json" --report "$REPORT_ONLY/RESULTS-section.md" --print)
    if [ "$WRITE" = 1 ]; then args+=(--results-md "$ROOT/benches/RESULTS.md" --readme "$ROOT/README.md"); fi
    exec python3 "$ROOT/benches/compare_report.py" "${args[@]}"
fi

# --- 1. tools -------------------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$INSTALL" = 1 ]; then
        log "installing ${missing[*]}"
        timeout 600 $SUDO apt-get update -qq
        timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "not installed (and --no-install): ${missing[*]}"
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- 2. build -------------------------------------------------------------------------------
log "building tether (release) and the compare bench"
timeout 1800 cargo build --release --bin tether
EXE=$(timeout 1800 cargo bench --no-run --bench compare --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "compare" and m.get("executable"):
        print(m["executable"])
')
[ -x "$EXE" ] || { echo "compare.sh: cannot find the compare bench binary" >&2; exit 1; }

# --- 3. measure -----------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$ROOT/target/compare/$STAMP"
mkdir -p "$OUT"
PIDFILE="$OUT/pids"
: > "$PIDFILE"

# Stop what the binary started if it did not get to do so itself (it was killed): the process
# groups it recorded, by id, only those still alive.
cleanup() {
    if [ -s "$PIDFILE" ]; then
        while read -r group; do
            [ -n "$group" ] && kill -0 -- "-$group" 2>/dev/null && kill -KILL -- "-$group" 2>/dev/null || true
        done < "$PIDFILE"
    fi
}
trap cleanup EXIT

count() { tr ',' '\n' <<<"$1" | grep -c .; }
if [ -z "$BUDGET" ]; then
    # Per variant: 3 workloads of warm-up + window + start-up; per idle-tunnel run ~90 s; x2 slack.
    variants=$(( $(count "$SYSTEMS") * $(count "$WORKERS") ))
    per_rep=$(( variants * (3 * (${SECONDS_%.*} + ${WARMUP%.*} + 4) + 5) + 6 * 90 ))
    BUDGET=$(( 300 + 2 * REPS * per_rep ))
fi

machine_load=$(cut -d' ' -f1-3 /proc/loadavg)
log "measuring: $REPS repetition(s), ${SECONDS_} s windows, tunnels $TUNNELS (load average $machine_load; limit ${BUDGET} s)"
started=$(date +%s)
COMPARE_OUT="$OUT/results.jsonl" COMPARE_REPS=$REPS COMPARE_SECONDS=$SECONDS_ COMPARE_WARMUP=$WARMUP \
COMPARE_TUNNELS=$TUNNELS COMPARE_IDLE=$IDLE COMPARE_SYSTEMS=$SYSTEMS COMPARE_WORKERS=$WORKERS \
COMPARE_TESTS=$TESTS TETHER_BENCH_PIDFILE=$PIDFILE \
    timeout -k 30 "$BUDGET" "$EXE" --bench
elapsed=$(( $(date +%s) - started ))

# --- 4. report ------------------------------------------------------------------------------
python3 - "$OUT/meta.json" <<EOF
import json, subprocess, sys
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return "?"
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip() or sh("uname -m")
mem_kib = int(sh("grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2") or 0)
meta = {
    "command": """$COMMAND""",
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    "commit": sh("git rev-parse --short HEAD") + (" + uncommitted changes" if sh("git status --porcelain --untracked-files=no") else ""),
    "branch": sh("git rev-parse --abbrev-ref HEAD"),
    "nproc": sh("nproc"),
    "cpu": cpu,
    "kernel": sh("uname -r"),
    "memory": f"{mem_kib / 1048576:.0f} GiB RAM",
    "nginx": sh("nginx -v 2>&1 | sed 's/^nginx version: //'"),
    "haproxy": sh("haproxy -v 2>&1 | head -n1 | cut -d' ' -f1-3"),
    "wrk": sh("wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2"),
    "h2load": sh("h2load --version 2>&1 | head -n1"),
    "tether": sh("target/release/tether --version | cut -d' ' -f2"),
    "rustc": sh("rustc --version | cut -d' ' -f1-2"),
    "duration": f"{$elapsed // 60} min {$elapsed % 60} s measuring, {$(( $(date +%s) - SCRIPT_START )) // 60} min {$(( $(date +%s) - SCRIPT_START )) % 60} s in all",
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

report_args=(--results "$OUT/results.jsonl" --meta "$OUT/meta.json" --report "$OUT/RESULTS-section.md" --print)
if [ "$WRITE" = 1 ]; then
    report_args+=(--results-md "$ROOT/benches/RESULTS.md" --readme "$ROOT/README.md")
fi
python3 "$ROOT/benches/compare_report.py" "${report_args[@]}"
log "done in $((elapsed / 60)) min $((elapsed % 60)) s; raw results and report in ${OUT#"$ROOT"/}"
if [ "$WRITE" = 1 ]; then
    log "updated benches/RESULTS.md and README.md between the compare markers"
fi

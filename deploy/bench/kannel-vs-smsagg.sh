#!/usr/bin/env bash
# Kannel vs smsagg, side by side on one machine, against the same simulated operator.
#
#   deploy/bench/kannel-vs-smsagg.sh            # DURATION=20 by default
#   DURATION=10 deploy/bench/kannel-vs-smsagg.sh
#   deploy/bench/kannel-vs-smsagg.sh --check    # only check that the tools are installed
#
# 1. the simulator SMSC (`python -m simulator smsc --port 0`, receipts on; stats lines every
#    0.25 s, time-stamped here, give its submit_sm counter over time);
# 2. Kannel: bearerbox + smsbox from deploy/bench/kannel.conf.in (2 SMPP binds to the SMSC,
#    max-pending-submits = 10 each, store-type = file), loaded by
#    `wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s` with single-message sendsms GETs
#    (dlr-mask=31, so the SMSC sends receipts);
# 3. smsagg (`python -m aggregator run`: 2 binds x window 10, WORKERS HTTP ingress processes,
#    receipts always requested, SQLite store with synchronous=FULL), loaded the same way with
#    POST /v1/messages;
# then it prints, for both: accepted req/s (2xx answers / wrk's duration) and the msg/s that
# reached the SMSC during the load (submit counter interpolated at wrk's start and end), and
# the ratio smsagg/Kannel of the relayed msg/s, and each gateway's CPU per relayed message: utime
# + stime from /proc/PID/stat of its processes (Kannel: bearerbox, smsbox; smsagg: the daemon and
# every child, by role) from wrk's start to CPU_TAIL s after its end, divided by the SMSC's
# submit_sm count over that span. No receipt callbacks on either side (Kannel: no dlr-url, smsbox
# logs at panic level only, else it logs an error per receipt; smsagg: no callback_url, log level
# warning); the SMSC's receipts are processed by both.
#
# Environment: DURATION (s, default 20), THREADS (2), CONNECTIONS (50), RATE (requests/s offered
# in all, paced by wrk's delay() per connection; default 0: as fast as wrk can), CPU_TAIL (s,
# default 3), WORKERS (smsagg's [http] workers: HTTP ingress processes next to the daemon,
# default 1), PYTHON (default: the
# repository's .venv/bin/python, else python3; it must import smsagg), TOOL_PATH (where to look
# for bearerbox/smsbox/wrk; default $PATH:/usr/sbin:/usr/local/sbin), KEEP=1 keeps the temp dir.
# Exit: 0 measured, 1 a step failed, 2 tools missing.

set -euo pipefail
export LC_ALL=C  # a '.' in $EPOCHREALTIME and in printf

DURATION=${DURATION:-20}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-50}
RATE=${RATE:-0}
CPU_TAIL=${CPU_TAIL:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOL_PATH=${TOOL_PATH:-$PATH:/usr/sbin:/usr/local/sbin}
START_TIMEOUT=30   # seconds for a process to listen / bind
STOP_TIMEOUT=15    # seconds after SIGTERM before SIGKILL

log() { printf '%s\n' "$*" >&2; }
die() { log "kannel-vs-smsagg: $*"; exit 1; }

install_hint() {
    cat >&2 <<EOF
kannel-vs-smsagg: missing: $*
Install them (Debian/Ubuntu):
    apt-get update && apt-get install -y kannel wrk
(package kannel provides bearerbox and smsbox, in /usr/sbin)
EOF
}

find_tool() { PATH="$TOOL_PATH" command -v "$1" 2>/dev/null; }

check_tools() {
    local missing=() tool
    for tool in bearerbox smsbox wrk; do
        find_tool "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        install_hint "${missing[*]}"
        return 2
    fi
}

check_tools || exit 2
[[ ${1:-} == --check ]] && { log "kannel-vs-smsagg: bearerbox, smsbox and wrk found"; exit 0; }
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a positive integer"
[[ $RATE =~ ^[0-9]+$ ]] || die "RATE must be a whole number of requests per second (0: unpaced)"
[[ $CPU_TAIL =~ ^[0-9]+$ ]] || die "CPU_TAIL must be a whole number of seconds"
BEARERBOX=$(find_tool bearerbox)
SMSBOX=$(find_tool smsbox)
WRK=$(find_tool wrk)
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
(cd "$ROOT" && "$PYTHON" -c 'import aggregator.app, simulator.cli') 2>/dev/null \
    || die "$PYTHON cannot import smsagg: set PYTHON=/path/to/venv/bin/python (pip install -e .)"

DIR=$(mktemp -d "${TMPDIR:-/tmp}/kannel-vs-smsagg.XXXXXX")
PIDS=()

stop_pid() {  # SIGTERM, then SIGKILL after STOP_TIMEOUT; only our own children, by pid
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    PIDS=()
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {  # N ports that were free a moment ago
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.1 s
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "timed out after ${seconds}s waiting for $what (logs in $DIR; KEEP=1 keeps them)"
}

stamp() {  # prefix each line with the time it was read
    local line
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}

# SMSC counter at time T, interpolated between the stats lines around it.
counter_at() {  # counter_at NAME T  (NAME: submits, receipts_acked, ...)
    awk -v key="$1=" -v t="$2" '
        { for (i = 2; i <= NF; i++) if (index($i, key) == 1) {
              n = substr($i, length(key) + 1) + 0
              if ($1 <= t) { t0 = $1; n0 = n; have0 = 1 }
              else if (!have1) { t1 = $1; n1 = n; have1 = 1 }
          } }
        END {
            if (!have0) { printf "%.1f\n", have1 ? n1 : 0; exit }
            if (!have1 || t1 <= t0) { printf "%.1f\n", n0; exit }
            printf "%.1f\n", n0 + (n1 - n0) * (t - t0) / (t1 - t0)
        }' "$DIR/smsc.log"
}

smsc_has_sample_after() { awk -v t="$1" '/submits=/ && $1 > t { found = 1 } END { exit !found }' \
    "$DIR/smsc.log"; }

tree_cpu() { (cd "$ROOT" && "$PYTHON" -m simulator.proctree "$@"); }  # {role: CPU s} as JSON

# CPU-µs per relayed message, per role and in total: "role=µs ... total=µs" on one line.
cpu_per_message() {  # cpu_per_message BEFORE.json AFTER.json MESSAGES
    "$PYTHON" - "$@" <<'EOF'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
messages = float(sys.argv[3])
delta = {role: after[role] - before.get(role, 0.0) for role in sorted(after)}
if messages <= 0:
    print("total=n/a")
else:
    parts = [f"{role}={seconds * 1e6 / messages:.0f}" for role, seconds in delta.items()]
    print(" ".join(parts + [f"total={sum(delta.values()) * 1e6 / messages:.0f}"]))
EOF
}

# -- run wrk against URL with SCRIPT, measuring the CPU of PIDS' trees -------------------------
measure() {  # measure NAME URL LUA PIDS...
    local name=$1 url=$2 lua=$3 out="$DIR/wrk-$1.txt" t0 t1 t2 s0 s1 s2 r0 r1 i
    shift 3
    log "kannel-vs-smsagg: $name: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s $url"
    sleep 0.5  # a fresh SMSC sample before the start
    tree_cpu "$@" >"$DIR/cpu-$name-before.json"
    t0=$EPOCHREALTIME
    timeout $((DURATION + 60)) "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
        --timeout 10s -s "$lua" "$url" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    t1=$EPOCHREALTIME
    sleep "$CPU_TAIL"  # receipts and backlog after the load are charged to it
    tree_cpu "$@" >"$DIR/cpu-$name-after.json"
    t2=$EPOCHREALTIME
    for ((i = 0; i < 40; i++)); do smsc_has_sample_after "$t2" && break; sleep 0.1; done
    s0=$(counter_at submits "$t0"); s1=$(counter_at submits "$t1"); s2=$(counter_at submits "$t2")
    printf '%s %s\n' "$name" "$(cpu_per_message "$DIR/cpu-$name-before.json" \
        "$DIR/cpu-$name-after.json" "$(awk -v a="$s0" -v b="$s2" 'BEGIN { print b - a }')")" \
        >>"$DIR/cpu.txt"
    r0=$(counter_at receipts_acked "$t0"); r1=$(counter_at receipts_acked "$t1")
    awk -v name="$name" -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v r0="$r0" -v r1="$r1" '
        / requests in / { requests = $1; secs = $4; sub(/s,?$/, "", secs) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { sockerr = $0; sub(/^ *Socket errors: */, "", sockerr) }
        END {
            accepted = requests - non2xx
            printf "%s %d %d %.1f %.1f %.1f %d %s\n", name, requests, non2xx,
                (secs > 0 ? accepted / secs : 0), (s1 - s0) / (t1 - t0), t1 - t0,
                r1 - r0, (sockerr == "" ? "none" : sockerr)
        }' "$out" >>"$DIR/results.txt"
    grep -q " requests in " "$out" || die "no wrk summary: $(cat "$out")"
}

fill() {  # fill TEMPLATE > FILE: replace @DIR@ @SMSC_PORT@ ... with the shell variables
    sed -e "s|@DIR@|$DIR|g" -e "s|@SMSC_PORT@|$SMSC_PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
        -e "s|@SMSBOX_PORT@|$SMSBOX_PORT|g" -e "s|@SENDSMS_PORT@|$SENDSMS_PORT|g" \
        -e "s|@HTTP_PORT@|$HTTP_PORT|g" "$1"
}

kannel_binds_online() {
    [[ $(curl -fsS "http://127.0.0.1:$ADMIN_PORT/status.txt?password=bench" \
        | grep -c 'online') -ge 2 ]]
}

smsagg_binds_up() {
    [[ $(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" \
        | grep -E '^smsagg_bind_up\{' | grep -c ' 1\.0$') -ge 2 ]]
}

# With RATE, each of the CONNECTIONS waits CONNECTIONS/RATE s before each request (wrk's delay(),
# in ms): about RATE requests/s in all while answers take less than that.
pace() {
    ((RATE > 0)) || return 0
    printf 'delay = function() return %s end\n' \
        "$(awk -v c="$CONNECTIONS" -v r="$RATE" 'BEGIN { printf "%.3f", c * 1000 / r }')"
}

LOAD_AVG=$(cut -d' ' -f1 /proc/loadavg)
read -r ADMIN_PORT SMSBOX_PORT SENDSMS_PORT HTTP_PORT < <(free_ports 4)

# -- 1. the SMSC -------------------------------------------------------------------------------
mkfifo "$DIR/smsc.fifo"
stamp <"$DIR/smsc.fifo" >"$DIR/smsc.log" &
PIDS+=($!)
(cd "$ROOT" && exec "$PYTHON" -m simulator smsc --port 0 --stats-interval 0.25 \
    --stats-file "$DIR/smsc-summary.json") 2>"$DIR/smsc.fifo" >"$DIR/smsc.out" &
PIDS+=($!)
wait_until "$START_TIMEOUT" "the SMSC" grep -q 'listening on' "$DIR/smsc.log"
SMSC_PORT=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$DIR/smsc.log" | head -n1)
log "kannel-vs-smsagg: SMSC on 127.0.0.1:$SMSC_PORT, work dir $DIR"

# -- 2. Kannel ---------------------------------------------------------------------------------
fill "$HERE/kannel.conf.in" >"$DIR/kannel.conf"
cat >"$DIR/kannel.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  local to = string.format("%%2B38344%06d", math.random(100000, 999999))
  return wrk.format("GET", "/cgi-bin/sendsms?username=bench&password=bench&from=BENCH&to="
    .. to .. "&text=smsagg+bench+message&dlr-mask=31")
end
EOF
pace >>"$DIR/kannel.lua"
"$BEARERBOX" -v 2 "$DIR/kannel.conf" >"$DIR/bearerbox.out" 2>&1 &
BEARERBOX_PID=$!
PIDS+=($BEARERBOX_PID)
wait_until "$START_TIMEOUT" "Kannel's 2 binds online" kannel_binds_online
"$SMSBOX" -v 4 "$DIR/kannel.conf" >"$DIR/smsbox.out" 2>&1 &
SMSBOX_PID=$!
PIDS+=($SMSBOX_PID)
wait_until "$START_TIMEOUT" "smsbox's sendsms port" \
    curl -sS -o /dev/null "http://127.0.0.1:$SENDSMS_PORT/"
measure kannel "http://127.0.0.1:$SENDSMS_PORT" "$DIR/kannel.lua" "$BEARERBOX_PID" \
    "$SMSBOX_PID"
stop_pid "$SMSBOX_PID"
stop_pid "$BEARERBOX_PID"

# -- 3. smsagg ---------------------------------------------------------------------------------
cat >"$DIR/smsagg.toml" <<EOF
[http]
listen = "127.0.0.1:$HTTP_PORT"
workers = $WORKERS
[store]
path = "$DIR/smsagg.db"
[log]
level = "warning"
[[accounts]]
name = "bench"
api_key = "bench-key"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = $SMSC_PORT
system_id = "smsagg"
password = "pw"
binds = 2
window = 10
max_tps = 100000
[[routes]]
prefixes = ["*"]
providers = ["sim"]
EOF
cat >"$DIR/smsagg.lua" <<'EOF'
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
request = function()
  local body = string.format('{"to":"+38344%06d","from":"BENCH","text":"smsagg bench message"}',
    math.random(100000, 999999))
  return wrk.format(nil, "/v1/messages", nil, body)
end
EOF
pace >>"$DIR/smsagg.lua"
(cd "$ROOT" && exec "$PYTHON" -m aggregator run --config "$DIR/smsagg.toml" \
    --drain-seconds 5) >"$DIR/smsagg.out" 2>&1 &
SMSAGG_PID=$!
PIDS+=($SMSAGG_PID)
wait_until "$START_TIMEOUT" "smsagg's 2 binds up" smsagg_binds_up
measure smsagg "http://127.0.0.1:$HTTP_PORT" "$DIR/smsagg.lua" "$SMSAGG_PID"
stop_pid "$SMSAGG_PID"

# -- report ------------------------------------------------------------------------------------
KANNEL_VERSION=$("$BEARERBOX" --version 2>&1 | sed -n 's/.*Kannel bearerbox version `\([^'"'"']*\).*/\1/p' \
    | head -n1)
awk -v dur="$DURATION" -v threads="$THREADS" -v conns="$CONNECTIONS" -v load="$LOAD_AVG" \
    -v kver="${KANNEL_VERSION:-?}" -v rate="$RATE" '
    { name[NR] = $1; req[NR] = $2; non[NR] = $3; acc[NR] = $4; rel[NR] = $5; win[NR] = $6
      rcp[NR] = $7; err[NR] = $8; for (i = 9; i <= NF; i++) err[NR] = err[NR] " " $i
      if ($1 == "kannel") k = NR; else s = NR }
    END {
        printf "kannel-vs-smsagg: wrk -t%s -c%s -d%ss, single-message requests%s; simulator" \
            " SMSC with receipts; 2 binds x 10 in flight each; 1-min load average %s at start\n\n",
            threads, conns, dur, (rate > 0 ? ", paced at " rate " req/s offered" : ""), load
        printf "%-22s %10s %10s %15s %17s %10s  %s\n", "", "requests", "non-2xx",
            "accepted req/s", "relayed msg/s", "receipts", "wrk socket errors"
        for (i = 1; i <= NR; i++)
            printf "%-22s %10d %10d %15.1f %17.1f %10d  %s\n",
                (name[i] == "kannel" ? "Kannel " kver : "smsagg"), req[i], non[i], acc[i],
                rel[i], rcp[i], err[i]
        if (k && s && rel[k] > 0)
            printf "\nratio smsagg/Kannel, relayed msg/s: %.2f\n", rel[s] / rel[k]
        else
            printf "\nratio smsagg/Kannel, relayed msg/s: n/a (Kannel relayed nothing)\n"
    }' "$DIR/results.txt"
printf '\nCPU-µs per relayed message (utime + stime over the load and %s s after / SMSC submits):\n' \
    "$CPU_TAIL"
while read -r name figures; do
    printf '%-22s %s\n' "$([[ $name == kannel ]] && echo "Kannel ${KANNEL_VERSION:-?}" \
        || echo smsagg)" "$figures"
done <"$DIR/cpu.txt"

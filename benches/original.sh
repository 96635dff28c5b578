#!/usr/bin/env bash
# `make bench-original`: throughput of our read endpoints beside the original Python services
# (TheGreatGooo/HomeLabSmith, Flask under gunicorn), in one run, in one booted sandbox (a network
# namespace of its own, like run.sh). The original is never part of this repository: the run takes
# the path of a checkout of it from HOMELAB_ORIGINAL, installs Flask, gunicorn and psutil from PyPI
# into a venv inside the sandbox, and runs each service from its own unit file (renamed, on
# another port). One pending shutdown and one running model are present in both. Then, per
# endpoint, ours and the original's in turn: wrk -t2 -c16 -d8s --latency from the host.
# Not a test: it fails on a broken setup, never on a figure. Figures: benches/README.md.
# Usage (as root): HOMELAB_ORIGINAL=/path/to/HomeLabSmith bash benches/original.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=/var/tmp/homelab-bench-original
NS=homelab-bench-orig
NAME=bench-original
# shellcheck source=benches/lib.sh
. benches/lib.sh
COMMIT=fc4de87
ORIG=${HOMELAB_ORIGINAL:-}
SECONDS_PER_RUN=${BENCH_SECONDS:-8}
# Where the original's unit files expect their code, their venvs and their user.
HLS=/config/HomeLabSmith
VENV=/var/lib/home-lab-services/shutdown-venv
USER_=home-lab-services
# The original's ports (5001, 5002) are ours in the same sandbox; its copies listen here instead.
OPORT_SHUTDOWN=5011
OPORT_INFERENCE=5012

how="get one with: git clone https://github.com/TheGreatGooo/HomeLabSmith && git -C HomeLabSmith checkout $COMMIT; then run HOMELAB_ORIGINAL=\$PWD/HomeLabSmith make bench-original"
[ -n "$ORIG" ] || die "HOMELAB_ORIGINAL is not set: it must name a checkout of the original services (TheGreatGooo/HomeLabSmith, commit $COMMIT); $how"
for f in shutdown-service/shutdown_service.py shutdown-service/systemd/shutdown-service.service \
    inference-service/inference_service.py inference-service/systemd/inference-service.service; do
    [ -f "$ORIG/$f" ] || die "HOMELAB_ORIGINAL=$ORIG has no $f, so it is not a checkout of TheGreatGooo/HomeLabSmith; $how"
done
ORIG=$(cd "$ORIG" && pwd)
if [ "$(git -C "$ORIG" rev-parse --show-toplevel 2>/dev/null || true)" = "$ORIG" ]; then
    head=$(git -C "$ORIG" rev-parse HEAD)
    [[ $head == "$COMMIT"* ]] || die "HOMELAB_ORIGINAL=$ORIG is at commit ${head:0:7}, not $COMMIT: git -C $ORIG checkout $COMMIT"
    [ -z "$(git -C "$ORIG" status --porcelain --untracked-files=no -- shutdown-service inference-service)" ] ||
        die "HOMELAB_ORIGINAL=$ORIG has local changes in shutdown-service/ or inference-service/: git -C $ORIG checkout -- ."
    orig_rev=${head:0:7}
else
    echo "$NAME: note: $ORIG is not a git checkout, so its commit (expected $COMMIT) is not checked" >&2
    orig_rev="$COMMIT (not checked)"
fi

[ "$(id -u)" = 0 ] || die "the bench boots a systemd container: run it as root"
step "host prerequisites and build"
sandbox prereqs
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
make -s build
rev=$(git describe --always --dirty)

step "sandbox $DIR in network namespace $NS, with the original installed as its units expect"
cleanup
trap cleanup EXIT
sandbox create "$DIR"
mkdir -p "$DIR$HLS" "$DIR/config/models" "$DIR/etc/sysusers.d"
cp -a "$ORIG/shutdown-service" "$ORIG/inference-service" "$DIR$HLS/"
printf 'u %s - "original HomeLabSmith services" /var/lib/%s /usr/sbin/nologin\n' "$USER_" "$USER_" >"$DIR/etc/sysusers.d/bench-original.conf"
# Its units, verbatim but for the name, the port and the log identifier.
for svc in shutdown:5001:$OPORT_SHUTDOWN inference:5002:$OPORT_INFERENCE; do
    IFS=: read -r name port oport <<<"$svc"
    sed -e "s|--bind 0\.0\.0\.0:$port |--bind 0.0.0.0:$oport |" \
        -e "s|^SyslogIdentifier=.*|SyslogIdentifier=original-$name-service|" \
        "$ORIG/$name-service/systemd/$name-service.service" >"$UNITDIR/original-$name-service.service"
    grep -q -- "--bind 0.0.0.0:$oport " "$UNITDIR/original-$name-service.service" ||
        die "the original's $name-service.service has no 'gunicorn --bind 0.0.0.0:$port': is HOMELAB_ORIGINAL at $COMMIT?"
done
# Ours never exit when idle during the run, so that each figure is one process's.
for unit in shutdown-service inference-service; do
    mkdir -p "$UNITDIR/$unit.service.d"
    printf '[Service]\nEnvironment=HOMELAB_IDLE_TIMEOUT=0\n' >"$UNITDIR/$unit.service.d/bench.conf"
done
# Python's venv module is not in the sandbox's root file system: install it and the original's
# requirements before the boot, with the host's network (the booted sandbox has loopback only).
# pip trusts what the host trusts (the host's CA bundle).
cp /etc/ssl/certs/ca-certificates.crt "$DIR/root/host-ca.crt"
systemd-nspawn -q -D "$DIR" --register=no --keep-unit -E DEBIAN_FRONTEND=noninteractive \
    -E PIP_CERT=/root/host-ca.crt -E PIP_DISABLE_PIP_VERSION_CHECK=1 sh -ec "
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv $VENV
    $VENV/bin/pip install -q flask psutil gunicorn
    # The inference unit runs gunicorn from a venv of its own: the same packages serve.
    ln -s shutdown-venv ${VENV%/*}/inference-venv
    { python3 --version; $VENV/bin/pip freeze; } >/root/original-versions" >&2 ||
    die "could not install python3-venv from Debian or flask, psutil, gunicorn from PyPI into the sandbox"
versions=$(grep -iE '^(python|flask|gunicorn|psutil)[ =]' "$DIR/root/original-versions" | tr -s ' =' ' ' | paste -sd, - | sed 's/,/, /g')

sandbox boot "$DIR" "$NS" >/dev/null
inside sh -c "systemd-sysusers && systemd-tmpfiles --create && chown -R $USER_: /config && systemctl daemon-reload &&
    systemctl start home-lab-services.target original-shutdown-service.service original-inference-service.service"

step "one pending shutdown and one running model in both"
token=$(inside cat /etc/homelab/api-token)
auth="Authorization: Bearer $token"
# Answers "CODE BODY" of a request from the host into the sandbox.
req() {
    local body code
    body=$(mktemp)
    code=$(net curl -s --max-time 10 -o "$body" -w '%{http_code}' "$@") || true
    echo "$code $(tr -d '\n' <"$body")"
    rm -f "$body"
}
ok() { local r; r=$(req "$@"); [ "${r%% *}" = 200 ] || die "curl $* answered '${r:-nothing}'"; echo "${r#* }"; }
# Gunicorn needs a moment after its unit started: wait (with a deadline) until it answers.
for port in 5001 5002 $OPORT_SHUTDOWN $OPORT_INFERENCE; do
    for _ in $(seq 1 100); do net curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    net curl -s -o /dev/null "http://127.0.0.1:$port/" || die "nothing answers on :$port (journalctl in the sandbox says why)"
done
ok -X POST -H "$auth" -d '{"minutes": 30}' http://127.0.0.1:5001/shutdown/schedule >&2
# The original's POST needs `sudo -n true` to work, which its own unit (NoNewPrivileges=true)
# forbids: it answers 500. Its schedule is made by the function that POST calls after that check.
echo "original POST /shutdown/schedule: $(req -X POST -H 'Content-Type: application/json' -d '{"minutes": 30}' "http://127.0.0.1:$OPORT_SHUTDOWN/shutdown/schedule")" >&2
inside runuser -u "$USER_" -- sh -c "cd $HLS/shutdown-service && $VENV/bin/python -c '
import shutdown_service as s
ok, message = s.schedule_shutdown(30)
assert ok, message
print(\"original schedule_shutdown(30):\", message)'" >&2 || die "the original's schedule_shutdown(30) failed"
model='PORT=8081\nMODEL_COMMAND=/bin/sleep infinity\n'
inside sh -c "printf '$model' >/home/abc/models/configs/bench.env && chown abc:abc /home/abc/models/configs/bench.env &&
    printf '$model' >/config/models/bench.env && chown $USER_: /config/models/bench.env"
ok -X POST -H "$auth" http://127.0.0.1:5002/models/bench.env/start >&2

# label|our URL|the original's URL (empty: it has no such endpoint)
endpoints=(
    "GET /shutdown/status|:5001/shutdown/status|:$OPORT_SHUTDOWN/shutdown/status"
    "GET /shutdown/next|:5001/shutdown/next|:$OPORT_SHUTDOWN/shutdown/next"
    "GET /shutdown/schedules|:5001/shutdown/schedules|"
    "GET /models/running|:5002/models/running|:$OPORT_INFERENCE/models/running"
    "reference: GET /health (the original has none: its GET /)|:5001/health|:$OPORT_SHUTDOWN/"
)
step "what each endpoint answers (all must be 200)"
for e in "${endpoints[@]}"; do
    IFS='|' read -r label ours theirs <<<"$e"
    for url in $ours $theirs; do printf '%s\n  %s\n' "$url" "$(ok "http://127.0.0.1$url" | cut -c1-400)" >&2; done
done
[[ $(ok http://127.0.0.1:5001/shutdown/status) == *'"has_shutdown":true'* ]] || die "ours has no pending shutdown"
[[ $(ok "http://127.0.0.1:$OPORT_SHUTDOWN/shutdown/status") == *'"has_shutdown":true'* ]] || die "the original has no pending shutdown"
[[ $(ok http://127.0.0.1:5002/models/running) == *'"bench.env"'* ]] || die "ours does not list the running model"

# wrk on URL $1: "req/s p50-ms p99-ms non-2xx socket-errors" (wrk's own report goes to stderr).
measure() {
    local out
    out=$(net wrk -t2 -c16 -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1$1") || die "wrk failed on $1"
    echo "$out" >&2
    awk 'function ms(v) { return v ~ /us$/ ? v / 1000 : v ~ /ms$/ ? v + 0 : v ~ /m$/ ? v * 60000 : v * 1000 }
        $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)} $1 == "Requests/sec:" {rps = $2}
        /Non-2xx or 3xx responses:/ {bad = $NF}
        /Socket errors:/ {gsub(/,/, ""); err = $4 + $6 + $8 + $10}
        END {if (rps == "") exit 1; printf "%.0f %.2f %.2f %d %d\n", rps, p50, p99, bad, err}' <<<"$out" ||
        die "wrk printed no Requests/sec for $1"
}
# "N req/s, p50 / p99 ms" with any errors.
cell() {
    local rps=$1 p50=$2 p99=$3 bad=$4 err=$5 s
    s="$rps req/s, $p50 / $p99 ms"
    [ "$bad" = 0 ] || s+=", $bad non-2xx"
    [ "$err" = 0 ] || s+=", $err socket errors"
    echo "$s"
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
for e in "${endpoints[@]}"; do
    IFS='|' read -r label ours theirs <<<"$e"
    step "$label: ours ($ours), then the original (${theirs:-none})"
    quiet "ours $ours"
    read -r o_rps o_50 o_99 o_bad o_err < <(measure "$ours")
    after
    if [ -n "$theirs" ]; then
        quiet "original $theirs"
        read -r t_rps t_50 t_99 t_bad t_err < <(measure "$theirs")
        after
        ratio=$(awk -v a="$o_rps" -v b="$t_rps" 'BEGIN {printf "%.1fx", b ? a / b : 0}')
        rows+=("| $label | $(cell "$o_rps" "$o_50" "$o_99" "$o_bad" "$o_err") | $(cell "$t_rps" "$t_50" "$t_99" "$t_bad" "$t_err") | $ratio |")
    else
        rows+=("| $label | $(cell "$o_rps" "$o_50" "$o_99" "$o_bad" "$o_err") | no such endpoint | |")
    fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo
    echo "homelab vs original, $(date -u '+%F %H:%M') UTC, $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)),"
    echo "systemd $(inside systemctl --version | awk 'NR==1 {print $2}') in systemd-nspawn; ours at $rev; original at $orig_rev"
    echo "($versions); wrk -t2 -c16 -d${SECONDS_PER_RUN}s --latency from the host"
    echo "host load average before/after: $load_before / $load_after"
    echo "host CPU busy before/after each run: $busy_log"
    echo
    echo "| endpoint | ours: req/s, latency p50 / p99 | original: req/s, latency p50 / p99 | ours / original |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
}

#!/usr/bin/env bash
# `make bench`: benchmarks (not tests) of shutdown-service under a booted systemd, in a sandbox of
# its own inside a network namespace (so it does not clash with `make demo`). Measures:
#   (a) cold first request through socket activation, beside a trivial C responder whose unit is
#       made from shutdown-service.service (same dependencies and sandboxing; program, names differ)
#   (b) warm throughput on GET /health with wrk
#   (c) resident memory while running, and that no process is left once it exited on idle
# Figures and what they mean: benches/README.md. BENCH_RUNS (default 20) sets the cold-start runs.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=/var/tmp/homelab-bench
NS=homelab-bench
RUNS=${BENCH_RUNS:-20}

NAME=bench
# shellcheck source=benches/lib.sh
. benches/lib.sh
# Milliseconds "median min max" of the seconds given one per line.
stats() { sort -g | awk '{a[NR]=$1*1000} END {printf "%.2f %.2f %.2f\n", NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2, a[1], a[NR]}'; }
# "VmRSS RssAnon RssFile" in kB of a process inside.
rss_kb() { inside awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2} END {print ""}' "/proc/$1/status"; }
# Sets Environment=HOMELAB_IDLE_TIMEOUT for shutdown-service and reloads.
idle_timeout() {
    printf '[Service]\nEnvironment=HOMELAB_IDLE_TIMEOUT=%s\n' "$1" >"$UNITDIR/shutdown-service.service.d/idle.conf"
    inside systemctl daemon-reload
}

# One cold request: stop the service, check it is gone, time the first response from the host.
cold() {
    local unit=$1 port=$2 out
    inside systemctl stop -q "$unit"
    [ "$(inside systemctl is-active "$unit" || true)" = inactive ] || die "$unit did not stop"
    sleep 0.3
    out=$(net curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' "http://127.0.0.1:$port/health") || true
    [ "${out%% *}" = 200 ] || die "cold request to $unit on :$port got '${out:-no answer}'"
    echo "${out#* }"
}

[ "$(id -u)" = 0 ] || die "the bench boots a systemd container: run it as root"
step "host prerequisites and build"
sandbox prereqs
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
make -s build
rev=$(git describe --always --dirty)

step "sandbox $DIR in network namespace $NS"
cleanup
trap cleanup EXIT
sandbox create "$DIR"
gcc -O2 -static -o "$DIR/usr/local/bin/bench-trivial" benches/trivial-responder/trivial.c
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/root/bench-token" # for the diagnostic run
printf '[Unit]\nDescription=bench baseline socket\n\n[Socket]\nListenStream=5009\nAccept=no\n' >"$UNITDIR/bench-trivial.socket"
# shutdown-service.service itself (same dependencies, same [Service] section), with only the program,
# the names and the state directory changed.
sed -e 's|^Description=.*|Description=bench baseline: trivial responder, unit as shutdown-service.service|' \
    -e 's|shutdown-service\.socket|bench-trivial.socket|g' -e '/^PartOf=/d' \
    -e 's|^ExecStart=.*|ExecStart=/usr/local/bin/bench-trivial|' \
    -e 's|^SyslogIdentifier=.*|SyslogIdentifier=bench-trivial|' \
    -e 's|^StateDirectory=.*|StateDirectory=bench-trivial|' systemd/shutdown-service.service >"$UNITDIR/bench-trivial.service"
# 20 quick starts would hit the default start rate limit (5 in 10 s); this changes no sandboxing.
for unit in shutdown-service bench-trivial; do
    mkdir -p "$UNITDIR/$unit.service.d"
    printf '[Unit]\nStartLimitIntervalSec=0\n' >"$UNITDIR/$unit.service.d/bench.conf"
done
sandbox boot "$DIR" "$NS" >/dev/null
inside sh -c 'systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload &&
    systemctl start shutdown-service.socket bench-trivial.socket'

quiet "(a)"
step "(a) cold first request, $RUNS runs each (interleaved, after one unmeasured run each)"
cold shutdown-service.service 5001 >/dev/null
cold bench-trivial.service 5009 >/dev/null
ours=() base=()
for i in $(seq 1 "$RUNS"); do
    ours+=("$(cold shutdown-service.service 5001)")
    base+=("$(cold bench-trivial.service 5009)")
    printf '  run %2d: shutdown-service %s s, trivial %s s\n' "$i" "${ours[-1]}" "${base[-1]}" >&2
done
read -r o_med o_min o_max < <(printf '%s\n' "${ours[@]}" | stats)
read -r b_med b_min b_max < <(printf '%s\n' "${base[@]}" | stats)
share=$(awk -v a="$o_med" -v b="$b_med" 'BEGIN {printf "%.2f", a - b}')
after

step "(a) diagnostic: the same programs without systemd's sandbox setup (systemd-socket-activate)"
# systemd-socket-activate (inside the container, as root) execs the program on the first
# connection, as systemd does but without namespaces and mounts: what is left is the program's own
# start-up, with much less noise than the figures above.
bare() {
    inside env RUNS="$RUNS" PROG="$1" sh -c '
        for i in $(seq 0 "$RUNS"); do
            systemd-socket-activate -l 127.0.0.1:5019 -E HOMELAB_API_TOKEN_FILE=/root/bench-token \
                -E STATE_DIRECTORY=/tmp "$PROG" >/dev/null 2>&1 &
            sleep 0.2
            t=$(curl -s -o /dev/null -w "%{http_code} %{time_total}" http://127.0.0.1:5019/health)
            kill $!; wait $! 2>/dev/null
            [ "$i" = 0 ] || echo "$t"
        done'
}
quiet "(a) diagnostic"
bare_ours=$(bare /usr/bin/shutdown-service)
bare_base=$(bare /usr/local/bin/bench-trivial)
after
! printf '%s\n' "$bare_ours" "$bare_base" | grep -qv '^200 ' || die "a request without systemd failed: $bare_ours $bare_base"
read -r bo_med bo_min bo_max < <(awk '{print $2}' <<<"$bare_ours" | stats)
read -r bb_med bb_min bb_max < <(awk '{print $2}' <<<"$bare_base" | stats)
bare_share=$(awk -v a="$bo_med" -v b="$bb_med" 'BEGIN {printf "%.2f", a - b}')

step "(b) warm throughput: wrk -t2 -c16 -d10s http://127.0.0.1:5001/health (HOMELAB_IDLE_TIMEOUT=0)"
idle_timeout 0
# Restarts shutdown-service, runs wrk and prints its Requests/sec.
wrk_rps() {
    local out rps
    inside systemctl restart shutdown-service.service
    net curl -sf -o /dev/null "http://127.0.0.1:5001/health" || die "no answer before wrk"
    out=$(net wrk -t2 -c16 -d10s --latency http://127.0.0.1:5001/health)
    echo "$out" >&2
    ! grep -qE 'Non-2xx|Socket errors' <<<"$out" || echo "bench: note: wrk reported errors (above)" >&2
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    [ -n "$rps" ] || die "wrk printed no Requests/sec"
    echo "$rps $(awk '/requests in/ {print $1}' <<<"$out")"
}
log_lines() { inside journalctl -b -u shutdown-service.service -o cat --no-pager | grep -c '^GET /health 200' || true; }
logged_before=$(log_lines)
quiet "(b)"
read -r rps requests < <(wrk_rps) && [ -n "$rps" ] || die "the wrk run failed"
after
read -r rss_wrk anon_wrk file_wrk < <(rss_kb "$(pid_of shutdown-service.service)")
# One log line per request: count those journald stored (past its rate limit of 10000 lines in
# 30 s per unit it drops them).
sleep 2
logged=$(($(log_lines) - logged_before - 1)) # the request before wrk is not wrk's

step "(b) diagnostic: the same with StandardError=null (no journald; not the shipped configuration)"
printf '[Service]\nStandardError=null\n' >"$UNITDIR/shutdown-service.service.d/diag-nolog.conf"
inside systemctl daemon-reload
quiet "(b) diagnostic"
read -r rps_nolog _ < <(wrk_rps) && [ -n "$rps_nolog" ] || die "the wrk run failed"
after
rm "$UNITDIR/shutdown-service.service.d/diag-nolog.conf"

step "(c) memory: fresh process, 100 requests, then idle (HOMELAB_IDLE_TIMEOUT=2)"
idle_timeout 2
inside systemctl stop -q shutdown-service.service
net sh -c 'for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:5001/health || exit 1; done' || die "requests failed"
pid=$(pid_of shutdown-service.service)
[ "$pid" != 0 ] || die "shutdown-service is not running after 100 requests"
read -r rss_100 anon_100 file_100 < <(rss_kb "$pid")
for i in $(seq 1 100); do [ "$(inside systemctl is-active shutdown-service.service || true)" = inactive ] && break; sleep 0.1; done
state=$(inside systemctl is-active shutdown-service.service || true)
[ "$state" = inactive ] || die "shutdown-service did not exit on idle (state: $state)"
idle_pid=$(pid_of shutdown-service.service)
idle_procs=$(inside pgrep -cx shutdown-servic || true) # comm is cut to 15 characters
[ "$(inside systemctl is-active shutdown-service.socket || true)" = active ] || die "the socket did not stay"
net curl -sf -o /dev/null http://127.0.0.1:5001/health || die "no answer after the idle exit"

kb() { awk -v k="$1" -v a="$2" -v f="$3" 'BEGIN {printf "%d kB (%.1f MiB; anon %d, file %d)", k, k / 1024, a, f}'; }
yes_no() { awk "BEGIN {print ($1) ? \"yes\" : \"NO\"}"; }
{
    echo
    echo "homelab bench, $(date -u +%F), $(nproc) cores, systemd $(inside systemctl --version | awk 'NR==1 {print $2}') in systemd-nspawn, $rev"
    echo "host CPU busy before/after each phase (other work skews figures): $busy_log"
    printf '%-52s %-44s %-12s %s\n' measure measured target met
    printf '%-52s %-44s %-12s %s\n' "(a) cold first request, shutdown-service :5001" "median $o_med ms ($o_min-$o_max)" "" ""
    printf '%-52s %-44s %-12s %s\n' "(a) cold first request, trivial responder :5009" "median $b_med ms ($b_min-$b_max)" "" ""
    printf '%-52s %-44s %-12s %s\n' "(a) our share (difference of medians)" "$share ms" "<= 3 ms" "$(yes_no "$share <= 3")"
    printf '%-52s %-44s %-12s %s\n' "(a) diagnostic: shutdown-service, no sandbox" "median $bo_med ms ($bo_min-$bo_max)" "" ""
    printf '%-52s %-44s %-12s %s\n' "(a) diagnostic: trivial responder, no sandbox" "median $bb_med ms ($bb_min-$bb_max)" "" ""
    printf '%-52s %-44s %-12s %s\n' "(a) diagnostic: our share without the sandbox" "$bare_share ms" "" ""
    printf '%-52s %-44s %-12s %s\n' "(b) GET /health, wrk -t2 -c16 -d10s" "$rps req/s" ">= 30000" "$(yes_no "$rps >= 30000")"
    printf '%-52s %-44s %-12s %s\n' "(b) request log lines journald kept" "$logged of $requests" "" ""
    printf '%-52s %-44s %-12s %s\n' "(b) diagnostic: same, StandardError=null" "$rps_nolog req/s" "" ""
    printf '%-52s %-44s %-12s %s\n' "(c) VmRSS, fresh process after 100 requests" "$(kb "$rss_100" "$anon_100" "$file_100")" "<= 5 MiB" "$(yes_no "$rss_100 <= 5120")"
    printf '%-52s %-44s %-12s %s\n' "(c) VmRSS, right after the wrk run" "$(kb "$rss_wrk" "$anon_wrk" "$file_wrk")" "<= 5 MiB" "$(yes_no "$rss_wrk <= 5120")"
    printf '%-52s %-44s %-12s %s\n' "(c) idle (exited after 2 s): MainPID, processes" "MainPID=$idle_pid, $idle_procs processes" "0" "$(yes_no "$idle_pid == 0 && $idle_procs == 0")"
}

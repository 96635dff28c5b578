#!/usr/bin/env bash
# Stress figures (not a test: nothing fails on a figure) for both HTTP services under hostile
# clients, on a booted systemd in a sandbox of its own inside a network namespace, like run.sh.
# Per service and attack (each on a freshly restarted process, so that its peak is its own):
# /health latency p50/p99/max (a fresh connection every 100 ms), failed probes, peak threads,
# peak memory (memory.peak of the unit's cgroup, else VmHWM) and the service's CPU time. Attacks,
# all from tests/e2e/hostile.py's `attack` inside the sandbox, to 127.0.0.1 only, bounded in
# count and time, STRESS_SECONDS (30) each, every connection reopened when the service closes it:
#   memory   500 heads of about 65 KB (bytes 0xFF on every other one) with all but the last byte
#            of a 65536-byte body
#   idle     600 connections that send nothing
#   slow     20 connections with a 1-byte receive buffer that pipeline requests and never read
#   trickle  20 connections sending a 64 KiB head a byte at a time
#   all      all of the above at once
# and one 50 MB header line (bigheader).
# Figures and what they mean: benches/README.md. Run as root: bash benches/stress.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=/var/tmp/homelab-stress
NS=homelab-stress
SECONDS_PER_ATTACK=${STRESS_SECONDS:-30}

NAME=stress
# shellcheck source=benches/lib.sh
. benches/lib.sh
hostile() { inside sh -c 'ulimit -n 4096 && exec timeout 150 python3 /root/hostile.py "$@"' hostile "$@"; }
# The value of key $1 in the key=value lines on stdin.
val() { awk -F= -v k="$1" '$1 == k {print $2}'; }

[ "$(id -u)" = 0 ] || die "the stress run boots a systemd container: run it as root"
step "host prerequisites and build"
sandbox prereqs
make -s build
rev=$(git describe --always --dirty)

step "sandbox $DIR in network namespace $NS"
cleanup
trap cleanup EXIT
sandbox create "$DIR"
cp tests/e2e/hostile.py "$DIR/root/hostile.py"
# Never exit when idle during the run, so that each service's figures are one process's.
for unit in shutdown-service inference-service; do
    mkdir -p "$UNITDIR/$unit.service.d"
    printf '[Service]\nEnvironment=HOMELAB_IDLE_TIMEOUT=0\n' >"$UNITDIR/$unit.service.d/stress.conf"
done
sandbox boot "$DIR" "$NS" >/dev/null
inside sh -c 'systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload &&
    systemctl start home-lab-services.target'

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s |' "$@")"); }
for svc in shutdown-service:5001 inference-service:5002; do
    unit=${svc%:*} port=${svc#*:}
    step "$unit on :$port"
    inside systemctl restart "$unit.service"
    ip netns exec "$NS" curl -sf -o /dev/null "http://127.0.0.1:$port/health" || die "$unit does not answer"
    for attack in rest memory idle slow trickle all; do
        case $attack in
            rest) args="0 0 0 0" ;;
            memory) args="500 0 0 0" ;;
            idle) args="0 600 0 0" ;;
            slow) args="0 0 20 0" ;;
            trickle) args="0 0 0 20" ;;
            all) args="500 600 20 20" ;;
        esac
        inside systemctl restart "$unit.service"
        pid=$(pid_of "$unit.service")
        quiet "$unit $attack"
        # shellcheck disable=SC2086 # four numbers
        out=$(hostile attack "$port" "$SECONDS_PER_ATTACK" "$pid" $args)
        after
        echo "$out" | tr '\n' ' ' >&2
        echo >&2
        [ "$(pid_of "$unit.service")" = "$pid" ] || die "$unit restarted during the $attack attack"
        row "$unit" "$attack ($args)" "$(val p50_ms <<<"$out") / $(val p99_ms <<<"$out") / $(val max_ms <<<"$out")" \
            "$(val failed <<<"$out") of $(val probes <<<"$out")" "$(val max_threads <<<"$out")" \
            "$(val peak_kb <<<"$out") ($(val peak_source <<<"$out"))" "$(val cpu_s <<<"$out")"
    done
    inside systemctl restart "$unit.service"
    pid=$(pid_of "$unit.service")
    out=$(hostile bigheader "$port" 50)
    hwm=$(inside awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    threads=$(inside awk '/^Threads:/ {print $2}' "/proc/$pid/status")
    rss=$(inside awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    row "$unit" "50 MB header (answer $(val status <<<"$out"), $(val sent <<<"$out") bytes sent)" "" "" "$threads" "$hwm (VmHWM; VmRSS $rss)" ""
    [ "$(pid_of "$unit.service")" = "$pid" ] || die "$unit restarted during the attacks"
    tasks=$(inside systemctl show -p TasksCurrent --value "$unit.service")
    echo "$unit: TasksCurrent after the attacks: $tasks" >&2
done

# The coordinator (its own admission socket, not HTTP): what it uses at rest, for its unit's bounds.
cpid=$(pid_of brain-experiment-coordinator.service)
if [ "$cpid" != 0 ]; then
    coord=$(inside awk '/^(Threads|VmRSS|VmHWM):/ {printf "%s %s%s; ", $1, $2, ($3 ? " " $3 : "")}' "/proc/$cpid/status")
else
    coord="not running"
fi

echo
echo "homelab stress, $(date -u +%F), $(nproc) cores, systemd $(inside systemctl --version | awk 'NR==1 {print $2}') in systemd-nspawn, $rev"
echo "| service | attack (memory, idle, slow, trickling connections) | /health p50 / p99 / max ms | failed probes | max threads | peak memory kB | service CPU s |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "brain-coordinator at rest: $coord"
echo "host CPU busy before/after each phase: $busy_log"

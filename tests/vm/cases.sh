#!/usr/bin/env bash
# The VM tier's cases, run inside the VM (homelab-vm-cases.service, after multi-user.target), on
# cgroup v2: each drives the product with the commands the README gives and measures the kernel's
# own accounting (memory.events, memory.current, memory.peak, cpu.stat, cpu.max, cgroup.freeze);
# the wake cases read the RTC's own alarm (/sys/class/rtc/rtc0/wakealarm, qemu's CMOS RTC).
#
# The wake cases span three boots of the same disk (tests/vm/vm.sh boots it again and passes
# homelab_vm.phase=N, and what the RTC alarm held at the last power-off, on the kernel command
# line): boot 1 runs the other cases, then schedules a daily power-off with a wake time over HTTP
# and lets it fire; boot 2 checks the alarm that power-off armed against what the product
# recorded, writes it back (what the firmware keeps on a real machine, and qemu does not) and
# deletes the schedule, then sets the machine's zone to Atlantic/Reykjavik (offset 0, no daylight
# saving) and has a second one, with a wake_calendar, fire; boot 3 checks that alarm, sets
# another alarm and deletes that second schedule, has abc ask root to clear an alarm root did not
# set, and arms an alarm on a local-time RTC (/etc/adjtime LOCAL) with the power-off itself made
# to fail (poweroff.target masked), so no fourth boot is needed. Naming any wake case runs them all.
#
# Report, on the second serial port (a file on the host; tests/vm/vm.sh reads it):
#   cases NAME...        the cases about to run (boot 1)
#   ok NAME              passed; `  NAME: ...` lines before it are what it measured
#   FAILED NAME          failed; `| ...` lines after it: the case's own output, then the journal
#   wakealarm=E now=T    the RTC alarm and the time when homelab-vm-wakealarm.service stopped, during
#                        a power-off a wake case scheduled (`--print-wakealarm`, its ExecStop)
#   summary P F          the end (of the last boot); the VM powers off after it
set -uo pipefail

WAKEALARM=/sys/class/rtc/rtc0/wakealarm
# ExecStop of homelab-vm-wakealarm.service: by then the power-off has begun, after the power
# action armed the alarm.
if [ "${1:-}" = --print-wakealarm ]; then
    printf 'wakealarm=%s now=%s\n' "$(cat "$WAKEALARM")" "$(date +%s)" >/dev/ttyS1
    exit 0
fi

LIB=/usr/local/lib/homelab-vm
DIR=/etc/brain-in-jar/experiments
TEMP=/run/test-temperature
COORD=brain-experiment-coordinator.service
SLICE=brain-experiments.slice
NCPU=$(nproc)

stty -F /dev/ttyS1 raw -echo 2>/dev/null || true
exec 3>/dev/ttyS1

fail() { echo "FAIL: $*" >&2; exit 1; }
# What a case measured: in the report whether it passes or not.
measured() { echo "  $CASE: $*" >&3; echo "measured: $*" >&2; }

# Waits until "$@" succeeds, at most SECONDS; polls every 0.2 s.
wait_for() {
    local desc=$1 secs=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for: $desc"
        sleep 0.2
    done
}

cgroup_of() { echo "/sys/fs/cgroup$(systemctl show -p ControlGroup --value "$1")"; }
prop() { systemctl show -p "$2" --value "$1"; }
usage_usec() { awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"; }
# A count from memory.events; 0 before the cgroup exists (the slice appears with its first unit).
event() { if [ -e "$1/memory.events" ]; then awk -v k="$2" '$1 == k { print $2 }' "$1/memory.events"; else echo 0; fi; }
# cpu.max; systemd leaves the cpu controller off for a cgroup when no unit below it needs it, and
# then there is no file and no quota.
cpu_max() { if [ -e "$1/cpu.max" ]; then cat "$1/cpu.max"; else echo "max 100000"; fi; }
# "$1 <= $2 <= $3", as decimals.
between() { awk -v lo="$1" -v x="$2" -v hi="$3" 'BEGIN { exit !(lo <= x && x <= hi) }'; }

# CPU-seconds per second the cgroup $1 used over $2 seconds of wall time (cpu.stat usage_usec).
cpu_rate() {
    local cg=$1 secs=$2 u0 u1 t0 t1
    u0=$(usage_usec "$cg"); t0=$(date +%s%N)
    sleep "$secs"
    u1=$(usage_usec "$cg"); t1=$(date +%s%N)
    awk -v du=$((u1 - u0)) -v dt=$(((t1 - t0) / 1000)) 'BEGIN { printf "%.3f", du / dt }'
}

# An experiment's .env: ID RAM COMMAND [CPU_QUOTA].
experiment() {
    {
        echo "EXPERIMENT_RAM_LIMIT=$2"
        echo "EXPERIMENT_COMMAND=$3"
        [ -z "${4:-}" ] || echo "EXPERIMENT_CPU_QUOTA=$4"
    } >"$DIR/$1.env"
}

# Nothing running, no experiments, a cool test temperature, a 1 GB budget.
reset() {
    systemctl stop brain-experiment.target 'brain-run-*.service' 'vm-bypass*.service' 2>/dev/null
    systemctl reset-failed 'brain-experiment@*' 'brain-run-*' 'vm-bypass*' 2>/dev/null
    systemctl thaw "$SLICE" 2>/dev/null
    systemctl set-property --runtime "$SLICE" CPUQuota= 2>/dev/null
    mkdir -p "$DIR"
    rm -f "$DIR"/*.env /etc/systemd/system/brain-experiment.target.wants/*
    echo 40000 >"$TEMP"
    printf '%s\n' MAX_CONCURRENT_EXPERIMENTS=4 TOTAL_RAM_LIMIT_GB=1 THROTTLE_TEMP_CELSIUS=75 \
        CRITICAL_TEMP_CELSIUS=85 TEMPERATURE_CHECK_INTERVAL_SECONDS=1 "TEMPERATURE_SOURCES=$TEMP" \
        >/etc/brain-in-jar/coordinator.env
    systemctl daemon-reload
    systemctl restart "$COORD"
}

# --- cases ---------------------------------------------------------------------------------

# Past its EXPERIMENT_RAM_LIMIT the kernel kills it; systemd restarts it; brainctl shows both.
oom_kill_and_restart() {
    local u=brain-experiment@oom.service slice_cg ev0 ev1 seen_systemd='' seen_brainctl=''
    experiment oom 128M "/usr/bin/python3 $LIB/hog.py 400"
    systemctl daemon-reload
    # Before the first start the slice has no cgroup yet: the path ends at /sys/fs/cgroup.
    slice_cg=/sys/fs/cgroup/none
    [ "$(prop "$SLICE" ActiveState)" != active ] || slice_cg=$(cgroup_of "$SLICE")
    ev0=$(event "$slice_cg" oom_kill)
    systemctl start brain-experiment@oom || fail "systemctl start brain-experiment@oom failed"
    slice_cg=$(cgroup_of "$SLICE")
    # The limit in the kernel: the unit's own cgroup (while it runs; it is recreated at each start).
    unit_limit() { [ "$(cat "$(cgroup_of $u)/memory.max" 2>/dev/null)" = 134217728 ]; }
    wait_for "memory.max 134217728 in the cgroup of $u" 30 unit_limit
    # Between a kill and the restart (RestartSec=2s) Result is oom-kill; both views, polled.
    oom_seen() {
        if [ "$(prop $u Result)" = oom-kill ] && [ "$(prop $u NRestarts)" -ge 1 ]; then seen_systemd=yes; fi
        if brainctl status --json oom | jq -e '.result == "oom-kill" and .restarts >= 1' >/dev/null; then
            seen_brainctl=yes
        fi
        [ -n "$seen_systemd" ] && [ -n "$seen_brainctl" ]
    }
    wait_for "Result=oom-kill with NRestarts>=1 (systemctl show) and the same in brainctl status --json" 120 oom_seen
    ev1=$(event "$slice_cg" oom_kill)
    measured "oom_kill in $SLICE memory.events: $ev0 -> $ev1; NRestarts=$(prop $u NRestarts); brainctl: $(brainctl status --json oom | jq -c '{result, restarts}')"
    [ $((ev1 - ev0)) -ge 1 ] || fail "memory.events oom_kill did not grow ($ev0 -> $ev1)"
    journalctl -k --no-pager | grep -q 'oom-kill:.*brain-experiment@oom' ||
        fail "no kernel oom-kill line for brain-experiment@oom in the kernel log"
}

# A busy loop at EXPERIMENT_CPU_QUOTA=25% (or brainctl run --cpu 25%) uses 0.25 ± 0.08 CPU.
quota_holds() {
    local u=$1 cg rate
    cg=$(cgroup_of "$u")
    [ "$(cat "$cg/cpu.max")" = "25000 100000" ] || fail "cpu.max of $u is '$(cat "$cg/cpu.max")', not '25000 100000'"
    started() { [ "$(usage_usec "$(cgroup_of "$u")")" -gt 200000 ]; }
    wait_for "the busy loop of $u to run" 30 started
    rate=$(cpu_rate "$cg" 6)
    measured "$u: cpu.max $(cat "$cg/cpu.max"), $rate CPU-s/s over 6 s"
    between 0.17 "$rate" 0.33 || fail "$u used $rate CPU-seconds per second, not 0.25 ± 0.08"
}

cpu_quota_from_env() {
    experiment burn 256M "/usr/bin/python3 $LIB/burn.py 1" 25%
    systemctl daemon-reload
    systemctl start brain-experiment@burn || fail "systemctl start brain-experiment@burn failed"
    quota_holds brain-experiment@burn.service
}

cpu_quota_from_brainctl_run() {
    brainctl run burnrun --memory 256M --cpu 25% -- /usr/bin/python3 "$LIB/burn.py" 1 ||
        fail "brainctl run failed"
    quota_holds brain-run-burnrun.service
}

# The slice's memory.max is TOTAL_RAM_LIMIT_GB; the kernel holds it even for a unit that bypasses
# admission, and admission keeps two experiments that would not fit together from running together.
slice_budget() {
    local cg ev0 ev1 max peak
    # The slice's cgroup exists once the slice is started (with its first unit, or now).
    systemctl start "$SLICE"
    cg=$(cgroup_of "$SLICE")
    max=$(cat "$cg/memory.max")
    measured "TOTAL_RAM_LIMIT_GB=1: $SLICE memory.max $max, MemoryMax $(prop "$SLICE" MemoryMax)"
    [ "$max" = 1073741824 ] || fail "$SLICE memory.max is $max, not 1073741824 (TOTAL_RAM_LIMIT_GB=1)"
    # Bypassing the coordinator (systemd-run into the slice, no limit of its own): the kernel stops it.
    ev0=$(event "$cg" oom_kill)
    systemd-run --unit=vm-bypass --slice="$SLICE" -p MemoryMax=infinity /usr/bin/python3 "$LIB/hog.py" 1400 ||
        fail "systemd-run failed"
    bypass_killed() { [ "$(prop vm-bypass.service Result)" = oom-kill ]; }
    wait_for "vm-bypass.service (1400 MiB in a 1 GiB slice) to be OOM-killed" 120 bypass_killed
    ev1=$(event "$cg" oom_kill)
    peak=$(cat "$cg/memory.peak")
    measured "bypassing unit: Result=oom-kill, slice oom_kill $ev0 -> $ev1, slice memory.peak $peak"
    [ $((ev1 - ev0)) -ge 1 ] || fail "the slice's memory.events oom_kill did not grow ($ev0 -> $ev1)"
    [ "$peak" -le "$max" ] || fail "the slice's memory.peak $peak is above its memory.max $max"
    systemctl reset-failed vm-bypass.service
    # Two experiments of 768M, each holding 700 MiB: together past the budget, so one waits.
    experiment big1 768M "/usr/bin/python3 $LIB/hog.py 700"
    experiment big2 768M "/usr/bin/python3 $LIB/hog.py 700"
    systemctl daemon-reload
    systemctl start brain-experiment@big1 || fail "start big1 failed"
    holding() { [ "$(cat "$(cgroup_of "brain-experiment@$1.service")/memory.current" 2>/dev/null || echo 0)" -ge $((700 << 20)) ]; }
    wait_for "big1 to hold 700 MiB" 120 holding big1
    systemctl start brain-experiment@big2 || fail "start big2 failed"
    local status
    status=$(prop brain-experiment@big2.service StatusText)
    measured "big1 holds $(cat "$(cgroup_of brain-experiment@big1.service)/memory.current") bytes; big2: $status"
    case "$status" in queued*TOTAL_RAM_LIMIT_GB*) ;; *) fail "big2 is not queued for RAM: '$status'" ;; esac
    # Over a few seconds the slice stays within its budget and nothing is killed.
    ev0=$(event "$cg" oom_kill)
    local _ cur
    for _ in $(seq 1 10); do
        cur=$(cat "$cg/memory.current")
        [ "$cur" -le "$max" ] || fail "slice memory.current $cur above memory.max $max"
        sleep 0.3
    done
    [ "$(event "$cg" oom_kill)" = "$ev0" ] || fail "an experiment was OOM-killed while the other waited"
    systemctl stop brain-experiment@big1
    wait_for "big2 to be admitted and hold 700 MiB once big1 stopped" 120 holding big2
    measured "after big1 stopped: big2 holds $(cat "$(cgroup_of brain-experiment@big2.service)/memory.current") bytes, slice memory.peak $(cat "$cg/memory.peak") <= $max"
    [ "$(cat "$cg/memory.peak")" -le "$max" ] || fail "slice memory.peak above memory.max"
}

# Throttle: the slice's cpu.max is half the CPUs and a busy experiment drops to it; critical: the
# slice is frozen and the CPU time stops; cooler again: both recover.
heat_throttles_and_freezes() {
    local u=brain-experiment@hot.service cg slice_cg rate u0 u1 want
    experiment hot 256M "/usr/bin/python3 $LIB/burn.py $NCPU"
    systemctl daemon-reload
    systemctl start brain-experiment@hot || fail "start hot failed"
    cg=$(cgroup_of $u)
    slice_cg=$(cgroup_of "$SLICE")
    running_all() { [ "$(usage_usec "$cg")" -gt 500000 ]; }
    wait_for "the busy loop to run" 30 running_all
    rate=$(cpu_rate "$cg" 5)
    measured "normal: slice cpu.max '$(cpu_max "$slice_cg")', $rate CPU-s/s with $NCPU busy processes"
    between $((NCPU * 60 / 100)).0 "$rate" "$NCPU.2" || fail "unthrottled, $rate CPU-s/s with $NCPU busy processes"
    want="$((NCPU * 50000)) 100000"
    echo 76000 >"$TEMP"
    throttled() { [ "$(cpu_max "$slice_cg")" = "$want" ]; }
    wait_for "slice cpu.max '$want' at 76 °C" 30 throttled
    sleep 1 # one period of the new quota before the measurement window
    rate=$(cpu_rate "$cg" 5)
    measured "76 °C: slice cpu.max '$(cpu_max "$slice_cg")', CPUQuotaPerSecUSec $(prop "$SLICE" CPUQuotaPerSecUSec), $rate CPU-s/s"
    between "$(awk -v n="$NCPU" 'BEGIN { print n * 0.5 - 0.15 }')" "$rate" "$(awk -v n="$NCPU" 'BEGIN { print n * 0.5 + 0.1 }')" ||
        fail "throttled, $rate CPU-s/s, not $NCPU × 0.5"
    echo 90000 >"$TEMP"
    frozen() { [ "$(cat "$slice_cg/cgroup.freeze")" = 1 ] && grep -qx 'frozen 1' "$slice_cg/cgroup.events"; }
    wait_for "the slice frozen at 90 °C (cgroup.freeze 1, cgroup.events frozen 1)" 30 frozen
    u0=$(usage_usec "$cg"); sleep 3; u1=$(usage_usec "$cg")
    measured "90 °C: cgroup.freeze $(cat "$slice_cg/cgroup.freeze"), usage_usec +$((u1 - u0)) in 3 s"
    [ $((u1 - u0)) -lt 20000 ] || fail "frozen, yet the busy loop used $((u1 - u0)) µs in 3 s"
    echo 78000 >"$TEMP"
    thawed_throttled() { [ "$(cat "$slice_cg/cgroup.freeze")" = 0 ] && [ "$(cpu_max "$slice_cg")" = "$want" ]; }
    wait_for "thawed and still throttled at 78 °C" 30 thawed_throttled
    sleep 1
    rate=$(cpu_rate "$cg" 5)
    measured "78 °C: cgroup.freeze 0, cpu.max '$(cpu_max "$slice_cg")', $rate CPU-s/s"
    between "$(awk -v n="$NCPU" 'BEGIN { print n * 0.5 - 0.15 }')" "$rate" "$(awk -v n="$NCPU" 'BEGIN { print n * 0.5 + 0.1 }')" ||
        fail "thawed and throttled, $rate CPU-s/s"
    echo 60000 >"$TEMP"
    normal() { [ "$(cpu_max "$slice_cg")" = "max 100000" ]; }
    wait_for "slice cpu.max 'max 100000' at 60 °C" 30 normal
    sleep 1
    rate=$(cpu_rate "$cg" 5)
    measured "60 °C: cpu.max '$(cpu_max "$slice_cg")', $rate CPU-s/s"
    between $((NCPU * 60 / 100)).0 "$rate" "$NCPU.2" || fail "recovered, yet $rate CPU-s/s"
}

# brainctl status and systemctl status show the cgroup's own memory figures (within 10 %).
memory_in_status() {
    local u=brain-experiment@mem.service cg json cur peak b_cur b_peak line shown
    experiment mem 512M "/usr/bin/python3 $LIB/hog.py 200"
    systemctl daemon-reload
    systemctl start brain-experiment@mem || fail "start mem failed"
    cg=$(cgroup_of $u)
    holding() { [ "$(cat "$cg/memory.current")" -ge $((200 << 20)) ]; }
    wait_for "mem to hold 200 MiB" 60 holding
    json=$(brainctl status --json mem)
    cur=$(cat "$cg/memory.current"); peak=$(cat "$cg/memory.peak")
    b_cur=$(jq -r .memory_current <<<"$json"); b_peak=$(jq -r .memory_peak <<<"$json")
    measured "cgroup memory.current $cur memory.peak $peak; brainctl memory_current $b_cur memory_peak $b_peak"
    within() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= b / 10) }'; }
    within "$b_cur" "$cur" || fail "brainctl memory_current $b_cur is not within 10 % of memory.current $cur"
    within "$b_peak" "$peak" || fail "brainctl memory_peak $b_peak is not within 10 % of memory.peak $peak"
    line=$(systemctl status --no-pager $u | grep -E '^ *Memory: ') || fail "systemctl status shows no Memory: line"
    shown=$(sed -E 's/^ *Memory: ([0-9.]+)([KMG]).*/\1 \2/' <<<"$line" |
        awk '{ m = ($2 == "K") ? 1024 : ($2 == "M") ? 1048576 : 1073741824; printf "%d", $1 * m }')
    measured "systemctl status: '$(sed 's/^ *//' <<<"$line")'"
    within "$shown" "$cur" || fail "systemctl status shows $shown bytes, memory.current is $cur"
}

# --- the wake cases (three boots) ----------------------------------------------------------

# What this run keeps from one boot to the next (the disk stays).
STATE=/var/lib/homelab-vm
ANSWER=/run/vm-api.json

# A homelab_vm.NAME= argument of the kernel command line (vm.sh sets them).
kernel_arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^homelab_vm\.$1=//p" | tail -n 1; }
PHASE=$(kernel_arg phase)
PHASE=${PHASE:-1}

alarm() { cat "$WAKEALARM"; }
# RFC 3339 (or null) to seconds since the epoch (or "").
epoch() { if [ "$1" = null ] || [ -z "$1" ]; then echo; else date -d "$1" +%s; fi; }

# METHOD PATH [BODY]: the API call of the README (curl with the bearer token); prints the HTTP
# status, the answer's body in $ANSWER.
api() {
    local token
    token=$(cat /etc/homelab/api-token)
    curl -sS --max-time 60 -o "$ANSWER" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $token" \
        ${3:+-d "$3"} "localhost:5001$2"
}

# The entry of schedule ID in GET /shutdown/schedules ("" when it is not listed).
entry_of() {
    curl -sS --max-time 60 localhost:5001/shutdown/schedules | jq -c --arg id "$1" '.schedules[] | select(.id == $id)'
}

# The services as the README starts them, with the API token (written by their first start).
services_up() {
    systemctl daemon-reload || fail "systemctl daemon-reload failed"
    systemctl enable --now home-lab-services.target || fail "systemctl enable --now home-lab-services.target failed"
    token_written() { [ -s /etc/homelab/api-token ]; }
    wait_for "/etc/homelab/api-token" 60 token_written
    healthy() { curl -sf --max-time 10 localhost:5001/health >/dev/null; }
    wait_for "GET /health of the shutdown service" 60 healthy
}

# The zone of the machine's wall clock, as timedatectl set-timezone sets it; the shutdown
# service is stopped so that its next start (its socket stays) reads the new zone.
set_zone() {
    ln -sf "/usr/share/zoneinfo/$1" /etc/localtime
    echo "$1" >/etc/timezone
    systemctl stop shutdown-service.service
}

# Schedules over HTTP a daily power-off a few seconds ahead (the VM's local time) that proceeds
# even when busy, with homelab-vm-wakealarm.service started to print the alarm when the power-off
# stops it; the first wakes the machine 60 minutes after it (wake_after_minutes), the second, in
# Atlantic/Reykjavik, at a wake_calendar 60 minutes after it, which the entry shows as its wake
# time. Records "ID DUE" in $STATE/NAME.
schedule_wake_poweroff() {
    local name=$1 due cal wake body code id want
    if [ "$name" = second ]; then set_zone Atlantic/Reykjavik; fi
    services_up
    echo 0 >"$WAKEALARM"
    systemctl start homelab-vm-wakealarm.service || fail "systemctl start homelab-vm-wakealarm.service failed"
    due=$(($(date +%s) + 10))
    cal=$(date -d "@$due" +%H:%M:%S)
    if [ "$name" = second ]; then
        wake=$(date -d "@$((due + 3600))" +%H:%M:%S)
        body=$(jq -nc --arg c "$cal" --arg w "$wake" '{calendar: $c, wake_calendar: $w, when_busy: "proceed"}')
        want='.wake_calendar == $w'
    else
        body=$(jq -nc --arg c "$cal" '{calendar: $c, wake_after_minutes: 60, when_busy: "proceed"}')
        want='.wake_after_minutes == 60'
    fi
    code=$(api POST /shutdown/schedule "$body")
    [ "$code" = 200 ] || fail "POST /shutdown/schedule $body answered $code: $(cat "$ANSWER")"
    id=$(jq -r .shutdown.id "$ANSWER")
    jq -e --arg w "${wake:-}" ".shutdown | .kind == \"recurring\" and .action == \"poweroff\" and $want
        and .when_busy == \"proceed\" and .wake_alarm_set == null and .state == \"pending\"" "$ANSWER" >/dev/null ||
        fail "the new schedule's entry is not a pending daily power-off with its wake time ($want): $(jq -c .shutdown "$ANSWER")"
    [ "$(epoch "$(jq -r .shutdown.next_elapse "$ANSWER")")" = "$due" ] ||
        fail "next_elapse $(jq -r .shutdown.next_elapse "$ANSWER") is not $cal today ($due)"
    mkdir -p "$STATE"
    echo "$id $due" >"$STATE/$name"
    # The wake time the entry shows, checked in the next boot (the power-off comes either way).
    jq -r .shutdown.wake_at "$ANSWER" >"$STATE/$name-wake-at"
    measured "boot $PHASE: zone $(cat /etc/timezone 2>/dev/null), POST $body -> id $id, next_elapse $(jq -r .shutdown.next_elapse "$ANSWER") (epoch $due), wake_at $(jq -r .shutdown.wake_at "$ANSWER"); waiting for it to power off"
}

# Waits for the power-off the schedule brings (systemd then stops this script); returns after
# 120 s without one.
await_poweroff() {
    trap 'exit 0' TERM
    local deadline=$(($(date +%s) + 120))
    while [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
    trap - TERM
    echo "FAIL: no power-off within 120 s of the schedule's time" >&2
    systemctl list-timers --all --no-pager 'homelab-shutdown@*' >&2
    systemctl status --no-pager 'homelab-shutdown@*.service' 'homelab-power-action@*.service' >&2
    return 1
}

# The alarm boot N-1's power-off left ($E), checked against the schedule recorded in $STATE/NAME:
# 60 minutes after the power-off (the schedule's due time, within 30 s of the gate firing), armed
# before the units stopped, recorded in the entry's wake_alarm_set and in the power action's
# journal line of that boot. Sets ID.
check_armed() {
    local name=$1 due stopped e late
    E=$(kernel_arg wakealarm)
    stopped=$(kernel_arg stopped_at)
    read -r ID due <"$STATE/$name" || fail "no schedule recorded by the boot before ($STATE/$name)"
    measured "power-off due $due ($(date -u -d "@$due" +%T) UTC); at its stop: wakealarm '$E', now $stopped; wakealarm - due = $((${E:-0} - due)) s (expected 3600 + the gate's delay)"
    [ -n "$E" ] || fail "the RTC alarm was empty when the power-off stopped homelab-vm-wakealarm.service: nothing armed it"
    late=$((E - due - 3600))
    if [ "$late" -lt 0 ] || [ "$late" -gt 30 ]; then
        fail "the alarm $E is not 60 minutes after the power-off due at $due (within 30 s): it is $((E - due)) s after"
    fi
    late=$((stopped - (E - 3600)))
    if [ "$late" -lt 0 ] || [ "$late" -gt 60 ]; then
        fail "the alarm $E was not armed within the minute before the units stopped at $stopped (now + 60 min would be $((stopped + 3600)))"
    fi
    listed() { [ -n "$(entry_of "$ID")" ]; }
    wait_for "schedule $ID listed again after the boot (homelab-shutdown-restore)" 60 listed
    e=$(entry_of "$ID")
    measured "entry after the boot: $(jq -c '{state, wake_after_minutes, wake_alarm_set, next_elapse}' <<<"$e")"
    [ "$(epoch "$(jq -r .wake_alarm_set <<<"$e")")" = "$E" ] ||
        fail "wake_alarm_set $(jq -r .wake_alarm_set <<<"$e") is not the alarm the power-off armed ($E)"
    if [ "$name" = second ]; then
        # A calendar wake is exact: the alarm is the wake_calendar's time, with no gate delay.
        [ "$E" = $((due + 3600)) ] || fail "the alarm $E is not the wake_calendar's time $((due + 3600))"
        jq -e '.state == "pending" and .wake_calendar != null' <<<"$e" >/dev/null ||
            fail "the daily schedule is not pending again with its wake_calendar: $e"
    else
        jq -e '.state == "pending" and .wake_after_minutes == 60' <<<"$e" >/dev/null ||
            fail "the daily schedule is not pending again with wake_after_minutes 60: $e"
    fi
    journalctl -b -1 -o cat --no-pager -u 'homelab-power-action@*' >"/run/vm-actor-$name.log"
    sed 's/^/  journal -b -1: /' "/run/vm-actor-$name.log" >&2
    grep -qF "wake alarm set for $E (" "/run/vm-actor-$name.log" ||
        fail "the boot before has no power action line 'wake alarm set for $E (...)'"
    journalctl -b -1 -o cat --no-pager -u "homelab-power-action@poweroff-wake-$E.service" | grep -q 'fired: powering off now' ||
        fail "homelab-power-action@poweroff-wake-$E.service did not log 'fired: powering off now' in the boot before"
    measured "journal of the boot before: $(grep -F "wake alarm set for $E (" "/run/vm-actor-$name.log")"
}

# (boot 2) The first power-off armed the alarm 60 minutes after it.
wake_alarm_set_at_poweroff() {
    check_armed first
    curl -sS --max-time 60 localhost:5001/shutdown/system | jq -e '.wake.rtc == true' >/dev/null ||
        fail "GET /shutdown/system does not say wake.rtc true"
}

# (boot 2) Deleting that schedule, its alarm held by the RTC as firmware keeps it, clears it.
wake_alarm_cleared_on_delete() {
    local code
    E=$(kernel_arg wakealarm)
    read -r ID _ <"$STATE/first" || fail "no schedule recorded by boot 1"
    [ -n "$E" ] || fail "no alarm from boot 1 to write back"
    measured "at this boot's start the RTC alarm is '$(alarm)' (qemu keeps none between runs); writing back $E"
    echo 0 >"$WAKEALARM"
    echo "$E" >"$WAKEALARM"
    [ "$(alarm)" = "$E" ] || fail "the alarm reads '$(alarm)' after writing $E"
    listed() { [ -n "$(entry_of "$ID")" ]; }
    wait_for "schedule $ID listed" 60 listed
    code=$(api DELETE "/shutdown/schedules/$ID")
    measured "DELETE /shutdown/schedules/$ID -> $code $(jq -c '{wake_alarm_cleared}' "$ANSWER"); wakealarm now '$(alarm)'"
    [ "$code" = 200 ] || fail "DELETE answered $code: $(cat "$ANSWER")"
    jq -e '.wake_alarm_cleared == true' "$ANSWER" >/dev/null || fail "the answer does not say wake_alarm_cleared true: $(cat "$ANSWER")"
    [ -z "$(alarm)" ] || fail "the alarm is '$(alarm)' after the delete, not empty"
    journalctl -b -o cat --no-pager -u "homelab-power-action@clear-wake-$E.service" | grep -qF "cleared the wake alarm $E (" ||
        fail "no line 'cleared the wake alarm $E (...)' of homelab-power-action@clear-wake-$E.service"
    [ -z "$(entry_of "$ID")" ] || fail "schedule $ID is still listed after the delete"
}

# (boot 3) In Atlantic/Reykjavik (offset 0, where systemd-analyze prints GMT and no "(in UTC)"
# line), the daily schedule's wake_calendar armed the alarm at its time.
wake_calendar_in_a_zone_at_offset_0() {
    local due shown
    read -r _ due <"$STATE/second" || fail "no schedule recorded by boot 2"
    shown=$(cat "$STATE/second-wake-at")
    measured "the entry's wake_at when scheduled: $shown (the wake_calendar's time: $((due + 3600)))"
    # The entry shows the wake time: the wake_calendar's next elapse after the power-off.
    [ "$(epoch "$shown")" = "$((due + 3600))" ] ||
        fail "in $(cat /etc/timezone) the entry's wake_at was $shown, not $(date -d "@$((due + 3600))" +%T) ($((due + 3600)))"
    check_armed second
    measured "zone $(cat /etc/timezone); systemd-analyze: $(systemd-analyze calendar "$(jq -r .wake_calendar <<<"$(entry_of "$ID")")" | grep -E 'Next elapse|in UTC' | tr -s ' ' | tr '\n' ';')"
}

# (boot 3) An alarm that is not the schedule's stays when the schedule is deleted; a schedule that
# never armed one does not touch it either.
foreign_wake_alarm_kept() {
    local foreign code id3
    E=$(kernel_arg wakealarm)
    read -r ID _ <"$STATE/second" || fail "no schedule recorded by boot 2"
    [ -n "$E" ] || fail "the power-off at the end of boot 2 armed no alarm"
    foreign=$((E + 900))
    echo 0 >"$WAKEALARM"
    echo "$foreign" >"$WAKEALARM"
    [ "$(alarm)" = "$foreign" ] || fail "the alarm reads '$(alarm)' after writing $foreign"
    code=$(api DELETE "/shutdown/schedules/$ID")
    measured "another alarm $foreign set; DELETE /shutdown/schedules/$ID (its alarm was $E) -> $code $(jq -c '{wake_alarm_cleared}' "$ANSWER"); wakealarm now '$(alarm)'"
    [ "$code" = 200 ] || fail "DELETE answered $code: $(cat "$ANSWER")"
    [ "$(alarm)" = "$foreign" ] || fail "the other alarm $foreign became '$(alarm)' when the schedule of $E was deleted"
    journalctl -b -o cat --no-pager -u "homelab-power-action@clear-wake-$E.service" | grep -qF "left the wake alarm alone: it is $foreign (" ||
        fail "no line 'left the wake alarm alone: it is $foreign (...)' of homelab-power-action@clear-wake-$E.service"
    code=$(api POST /shutdown/schedule '{"minutes": 60, "wake_after_minutes": 30}')
    [ "$code" = 200 ] || fail "POST {\"minutes\": 60, \"wake_after_minutes\": 30} answered $code: $(cat "$ANSWER")"
    id3=$(jq -r .shutdown.id "$ANSWER")
    jq -e '.shutdown.wake_alarm_set == null' "$ANSWER" >/dev/null || fail "a new schedule has a wake_alarm_set: $(cat "$ANSWER")"
    code=$(api DELETE "/shutdown/schedules/$id3")
    measured "a one-off schedule that never fired (wake_after_minutes 30), deleted -> $code $(jq -c '{wake_alarm_cleared}' "$ANSWER"); wakealarm now '$(alarm)'"
    [ "$code" = 200 ] || fail "DELETE answered $code: $(cat "$ANSWER")"
    jq -e 'has("wake_alarm_cleared") | not' "$ANSWER" >/dev/null || fail "deleting a schedule that never armed an alarm says wake_alarm_cleared: $(cat "$ANSWER")"
    [ "$(alarm)" = "$foreign" ] || fail "the other alarm $foreign became '$(alarm)' when a schedule that never armed one was deleted"
    echo 0 >"$WAKEALARM"
}

# (boot 3) abc reads the world-readable wakealarm and asks root to clear that alarm, which root
# did not set (rtcwake did, say): the alarm stays, and the journal says why.
abc_cannot_clear_an_alarm_root_did_not_set() {
    local foreign=$(($(date +%s) + 5000)) unit
    echo 0 >"$WAKEALARM"
    echo "$foreign" >"$WAKEALARM"
    unit=homelab-power-action@clear-wake-$(alarm).service
    runuser -u abc -- systemctl start "$unit" || fail "abc could not start $unit (polkit allows it)"
    measured "rtcwake-style alarm $foreign; as abc: systemctl start $unit; wakealarm now '$(alarm)'"
    [ "$(alarm)" = "$foreign" ] || fail "the alarm $foreign became '$(alarm)' when abc asked to clear it"
    journalctl -b -o cat --no-pager -u "$unit" | grep -qF "root did not set $foreign, so it is not root's to clear" ||
        fail "no journal line of $unit saying the alarm is not root's to clear"
    echo 0 >"$WAKEALARM"
}

# (boot 3) With /etc/adjtime saying LOCAL, the alarm root writes is the wake time shifted by the
# zone's offset at that time, as rtcwake writes it, so that the RTC, counting the wall clock,
# reaches it at the wake time's wall-clock moment; it reads back (GET /shutdown/system) as the
# wake time. The power-off is made to fail (poweroff.target masked for this boot): root's record
# stays, abc's clear of the raw value (not a time root set) leaves the alarm, and a later cancel's
# clear of the wake time clears it.
local_time_rtc_is_shifted_as_rtcwake_does() {
    local zone=Europe/Berlin at raw want offset unit code shown
    set_zone "$zone"
    printf '0.0 0 0.0\n0\nLOCAL\n' >/etc/adjtime
    systemctl mask --runtime poweroff.target
    echo 0 >"$WAKEALARM"
    at=$(($(date +%s) + 7200))
    unit=homelab-power-action@poweroff-wake-$at.service
    if runuser -u abc -- systemctl start "$unit"; then fail "$unit succeeded with poweroff.target masked"; fi
    raw=$(alarm)
    # rtcwake's correction: the zone's wall clock at the wake time, counted as if it were UTC.
    want=$(date -u -d "$(TZ=$zone date -d "@$at" '+%F %T')" +%s)
    offset=$(TZ=$zone date -d "@$at" +%z)
    measured "zone $zone, adjtime LOCAL, wake at $at ($(TZ=$zone date -d "@$at" '+%F %T %Z')): wakealarm $raw, rtcwake's value $want (offset $offset)"
    [ "$raw" = "$want" ] || fail "the RTC holds '$raw', not the local-time value $want of $at"
    [ "$raw" != "$at" ] || fail "the RTC holds the UTC epoch $at unshifted"
    [ "$(date -u -d "@$raw" '+%F %T')" = "$(TZ=$zone date -d "@$at" '+%F %T')" ] ||
        fail "the RTC's wall clock at the alarm is not the zone's wall clock at the wake time"
    journalctl -b -o cat --no-pager -u "$unit" | grep -qF "wake alarm set for $at (" ||
        fail "no line 'wake alarm set for $at (' of $unit"
    jq -e --argjson at "$at" '.armed.at == $at' /var/lib/homelab-power/wake-alarm.json >/dev/null ||
        fail "root's record does not keep $at after the failed power-off: $(cat /var/lib/homelab-power/wake-alarm.json)"
    shown=$(curl -sS --max-time 60 localhost:5001/shutdown/system | jq -r .wake.alarm)
    measured "GET /shutdown/system wake.alarm: $shown"
    [ "$(epoch "$shown")" = "$at" ] || fail "GET /shutdown/system shows the alarm as $shown, not $at"
    runuser -u abc -- systemctl start "homelab-power-action@clear-wake-$raw.service" ||
        fail "abc could not start homelab-power-action@clear-wake-$raw.service"
    [ "$(alarm)" = "$raw" ] || fail "clear-wake-$raw (the raw value, not a time root set) changed the alarm to '$(alarm)'"
    runuser -u abc -- systemctl start "homelab-power-action@clear-wake-$at.service" ||
        fail "abc could not start homelab-power-action@clear-wake-$at.service"
    measured "after clear-wake-$raw: kept; after clear-wake-$at: wakealarm '$(alarm)'"
    [ -z "$(alarm)" ] || fail "clear-wake-$at left the alarm '$(alarm)'"
    systemctl unmask --runtime poweroff.target
    printf '0.0 0 0.0\n0\nUTC\n' >/etc/adjtime
    set_zone Etc/UTC
}

CASES=(oom_kill_and_restart cpu_quota_from_env cpu_quota_from_brainctl_run slice_budget
    heat_throttles_and_freezes memory_in_status)
WAKE_CASES=(wake_alarm_set_at_poweroff wake_alarm_cleared_on_delete wake_calendar_in_a_zone_at_offset_0
    foreign_wake_alarm_kept abc_cannot_clear_an_alarm_root_did_not_set local_time_rtc_is_shifted_as_rtcwake_does)
CASES+=("${WAKE_CASES[@]}")
if [ $# -gt 0 ]; then
    CASES=()
    for c in "$@"; do [[ " ${WAKE_CASES[*]} " == *" $c "* ]] || CASES+=("$c"); done
    # The wake cases come as a whole: each boot builds on the one before.
    [ ${#CASES[@]} -eq $# ] || CASES+=("${WAKE_CASES[@]}")
fi
wake=
[[ " ${CASES[*]} " != *" ${WAKE_CASES[0]} "* ]] || wake=yes

# Counts over all boots.
mkdir -p "$STATE"
if [ "$PHASE" = 1 ] || [ ! -e "$STATE/counts" ]; then echo "0 0" >"$STATE/counts"; fi
read -r passed failed <"$STATE/counts"

# Runs case NAME (or, with a second argument, the step of NAME that STEP is) and reports it.
run_case() {
    CASE=$1
    local log=/run/vm-case-$CASE.log
    reset >"$log" 2>&1
    (set -e; "${2:-$CASE}") >>"$log" 2>&1
    if [ $? -eq 0 ]; then
        echo "ok $CASE" >&3
        passed=$((passed + 1))
    else
        echo "FAILED $CASE" >&3
        sed 's/^/| /' "$log" >&3
        echo "| --- the journal's last 200 lines ---" >&3
        journalctl --no-pager -o short-monotonic -n 200 | sed 's/^/| /' >&3
        failed=$((failed + 1))
    fi
    echo "$passed $failed" >"$STATE/counts"
}

# A boot's last step for the wake cases: schedule the power-off that ends it (NAME: where it is
# recorded) and wait for it. When it does not come, the wake cases still ahead (the arguments)
# fail, and the run ends.
end_with_poweroff() {
    local name=$1 log=/run/vm-poweroff.log c
    shift
    CASE=$1
    reset >"$log" 2>&1
    (set -e; schedule_wake_poweroff "$name") >>"$log" 2>&1
    # shellcheck disable=SC2181 # set -e holds only outside a condition
    [ $? -ne 0 ] || await_poweroff >>"$log" 2>&1
    # Only without a power-off: report the cases that now cannot run.
    for c in "$@"; do
        echo "FAILED $c" >&3
        echo "| not run: the power-off scheduled at the end of boot $PHASE did not happen" >&3
        failed=$((failed + 1))
    done
    sed 's/^/| /' "$log" >&3
    echo "| --- the journal's last 200 lines ---" >&3
    journalctl --no-pager -o short-monotonic -n 200 | sed 's/^/| /' >&3
    echo "summary $passed $failed" >&3
    exit 1
}

case $PHASE in
    1)
        echo "cases ${CASES[*]}" >&3
        for c in "${CASES[@]}"; do
            [[ " ${WAKE_CASES[*]} " == *" $c "* ]] || run_case "$c"
        done
        [ -z "$wake" ] || end_with_poweroff first "${WAKE_CASES[@]}"
        ;;
    2)
        run_case wake_alarm_set_at_poweroff
        run_case wake_alarm_cleared_on_delete
        end_with_poweroff second wake_calendar_in_a_zone_at_offset_0 foreign_wake_alarm_kept \
            abc_cannot_clear_an_alarm_root_did_not_set local_time_rtc_is_shifted_as_rtcwake_does
        ;;
    3)
        run_case wake_calendar_in_a_zone_at_offset_0
        run_case foreign_wake_alarm_kept
        run_case abc_cannot_clear_an_alarm_root_did_not_set
        run_case local_time_rtc_is_shifted_as_rtcwake_does
        ;;
esac
reset >/dev/null 2>&1
echo "summary $passed $failed" >&3

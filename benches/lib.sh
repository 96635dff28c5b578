# Shell shared by the benchmarks that boot a sandbox (sourced, not run). The caller sets NAME (the
# prefix of its messages), DIR (the sandbox) and NS (its network namespace) before sourcing.
# shellcheck shell=bash

# Where the sandbox's unit files go (its /etc/systemd/system); used by the sourcing scripts.
# shellcheck disable=SC2034
UNITDIR=$DIR/etc/systemd/system

die() { printf '\n%s: FAILED: %s\n' "$NAME" "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*" >&2; }
sandbox() { bash tests/e2e/sandbox.sh "$@"; }
inside() { sandbox exec "$DIR" "$@"; }
net() { ip netns exec "$NS" "$@"; }
cleanup() { sandbox stop "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR" "$DIR.console"; }
pid_of() { inside systemctl show -p MainPID --value "$1"; }
# Percent of the host's CPU busy over $1 seconds (default 1).
cpu_busy() {
    local a b
    a=$(head -n1 /proc/stat); sleep "${1:-1}"; b=$(head -n1 /proc/stat)
    printf '%s\n%s\n' "$a" "$b" | awk '{for (f = 2; f <= NF; f++) t[NR] += $f; i[NR] = $5 + $6}
        END {printf "%d", 100 - 100 * (i[2] - i[1]) / (t[2] - t[1])}'
}
# Other work on these 2 cores skews every figure: before a phase wait (up to BENCH_QUIET_WAIT
# seconds, default 5 minutes) for 3 quiet seconds, after it look again; both go into busy_log for
# the report.
busy_log=
quiet() {
    local busy
    for _ in $(seq 1 $((${BENCH_QUIET_WAIT:-300} / 3))); do busy=$(cpu_busy 3); [ "$busy" -le 10 ] && break; done
    [ "$busy" -le 10 ] || echo "$NAME: WARNING: the host is busy ($busy% CPU) before $1: figures will be skewed" >&2
    busy_log+="${busy_log:+, }$1 $busy%"
}
after() { busy_log+="/$(cpu_busy)%"; }

#!/usr/bin/env bash
# `make demo` / `make demo-stop`: boots Debian's systemd in a container on the HOST network with
# homelab installed, enables home-lab-services.target and shows socket activation on ports 5001
# and 5002 (service inactive, first request, service active), then the main job: a shutdown
# scheduled over HTTP, listed by systemctl list-timers and cancelled; a sample model started and
# listed as running; two experiments under a limit of one (one queued) in brainctl status; the
# metrics. The container is left running.
#
#   demo.sh start    (re)create and boot the demo container, then show it working
#   demo.sh stop     power it off and remove it
set -euo pipefail
cd "$(dirname "$0")/../.."

DIR=${HOMELAB_DEMO_DIR:-/var/tmp/homelab-demo}
PORTS=(5001 5002)
UNITS=(shutdown-service.socket shutdown-service.service inference-service.socket inference-service.service)

die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }
sandbox() { bash tests/e2e/sandbox.sh "$@"; }
inside() { sandbox exec "$DIR" "$@"; }
status() { inside systemctl status --no-pager --lines="$1" "${UNITS[@]}" || true; } # exits 3 if inactive

stop() {
    [ -n "$DIR" ] && [ "$DIR" != / ] || die "refusing to remove DIR=$DIR"
    local nspawn
    nspawn=$(cat "$DIR.nspawn-pid" 2>/dev/null || true)
    sandbox stop "$DIR"
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then die "systemd-nspawn ($nspawn) is still running"; fi
    rm -rf "$DIR" "$DIR.console"
}

start() {
    [ "$(id -u)" = 0 ] || die "the demo boots a systemd container: run it as root"
    step "host prerequisites and build"
    sandbox prereqs
    make -s build

    if [ -e "$DIR" ] || [ -e "$DIR.nspawn-pid" ]; then
        step "removing the previous demo container in $DIR"
        stop
    fi
    local port
    for port in "${PORTS[@]}"; do
        if ss -Hltn "sport = :$port" | grep -q .; then
            ss -Hltnp "sport = :$port" >&2
            die "port $port is already in use on this host; stop what holds it (above) and run make demo again"
        fi
    done

    step "creating $DIR (cached Debian 12 root file system + make install DESTDIR=$DIR)"
    sandbox create "$DIR"
    step "booting systemd in $DIR on the host network"
    trap '[ $? = 0 ] || echo "demo: the container is left as it is for inspection; make demo-stop removes it" >&2' EXIT
    sandbox boot "$DIR" >/dev/null

    step "enabling home-lab-services.target inside"
    inside sh -c 'systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload &&
        systemctl enable --now home-lab-services.target'

    step "before the first request: sockets listening, services inactive"
    status 0
    local unit
    for unit in shutdown-service inference-service; do
        [ "$(inside systemctl is-active "$unit.socket" || true)" = active ] || die "$unit.socket is not active"
        [ "$(inside systemctl is-active "$unit.service" || true)" = inactive ] ||
            die "$unit.service is already running before any request"
    done

    step "first requests from the host (each starts its service through socket activation)"
    local path
    for port in "${PORTS[@]}"; do
        for path in /health /; do
            echo "\$ curl -s 127.0.0.1:$port$path"
            curl -sS --fail-with-body --max-time 10 "127.0.0.1:$port$path" ||
                die "127.0.0.1:$port$path did not answer 200 (see: bash tests/e2e/sandbox.sh exec $DIR journalctl -b --no-pager)"
        done
    done

    step "after the requests: services active"
    status 5
    for unit in shutdown-service inference-service; do
        [ "$(inside systemctl is-active "$unit.service" || true)" = active ] || die "$unit.service is not active after a request"
    done

    main_job

    trap - EXIT
    cat <<EOF

==> The demo is running: systemd in $DIR, on this host's network.
    curl 127.0.0.1:5001/health ; curl 127.0.0.1:5002/health
    Metrics:          curl 127.0.0.1:5001/metrics ; curl 127.0.0.1:5002/metrics ; the coordinator's in
                      /var/lib/prometheus/node-exporter/homelab.prom (node_exporter's textfile collector)
    A shell inside:   bash tests/e2e/sandbox.sh exec $DIR bash
              (or:    nsenter -t \$(bash tests/e2e/sandbox.sh leader $DIR) -a bash)
    Stop it:          make demo-stop
EOF
}

# Shows the commands as a user types them, and their answers.
shown() { printf '$ %s\n' "$1"; inside sh -c "$1"; } # a command typed inside the container
api() { # METHOD PATH [JSON]: a request with the token, as the README shows it
    printf '$ curl -X %s -H "Authorization: Bearer $T" %s127.0.0.1:%s\n' "$1" "${3:+-d '$3' }" "$2"
    curl -sS --fail-with-body --max-time 100 -X "$1" -H "Authorization: Bearer $T" ${3:+-d "$3"} "127.0.0.1:$2" ||
        die "$1 $2 failed"
}

main_job() {
    T=$(inside cat /etc/homelab/api-token)
    step "a shutdown scheduled over HTTP is a systemd timer"
    api POST 5001/shutdown/schedule '{"minutes": 30}'
    shown "systemctl list-timers --no-pager 'homelab-shutdown@*'"
    api POST 5001/shutdown/cancel
    shown "systemctl list-timers --no-pager 'homelab-shutdown@*'"

    step "a sample model (~abc/models/configs/sample.env) started over HTTP is model@sample.env.service"
    inside sh -c 'printf "PORT=8081\nMODEL_COMMAND=/bin/sleep infinity\n" > /home/abc/models/configs/sample.env &&
        chown abc:abc /home/abc/models/configs/sample.env'
    api POST 5002/models/sample.env/start
    echo '$ curl -s 127.0.0.1:5002/models/running'
    curl -sS --max-time 10 127.0.0.1:5002/models/running || die "GET /models/running failed"
    api POST 5002/models/sample.env/stop

    step "two experiments under MAX_CONCURRENT_EXPERIMENTS=1: one runs, one waits its turn"
    inside sh -c 'printf "MAX_CONCURRENT_EXPERIMENTS=1\n" > /etc/brain-in-jar/coordinator.env &&
        systemctl reload brain-experiment-coordinator &&
        for id in sample_a sample_b; do
            printf "EXPERIMENT_RAM_LIMIT=256M\nEXPERIMENT_CPU_QUOTA=50%%\nEXPERIMENT_COMMAND=/bin/sleep infinity\n" \
                > /etc/brain-in-jar/experiments/$id.env
        done && systemctl daemon-reload'
    shown "brainctl start sample_a"
    shown "brainctl start sample_b"
    shown "brainctl status"

    step "metrics, in Prometheus' text format"
    echo '$ curl -s 127.0.0.1:5001/metrics | grep -v "^#"'
    curl -sS --max-time 10 127.0.0.1:5001/metrics | grep -v '^#' || die "no metrics on 5001"
    echo "(the coordinator's: /var/lib/prometheus/node-exporter/homelab.prom, once prometheus-node-exporter is installed)"
    shown "brainctl stop sample_b && brainctl stop sample_a"
}

case "${1:-}" in
    start) start ;;
    stop) stop; echo "demo: stopped; $DIR removed" ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

#!/usr/bin/env bash
# Boots a real systemd (Debian's, in systemd-nspawn) for the e2e suite, `make demo` and `make bench`.
#
#   sandbox.sh prereqs                 install the host tools when missing (fails under CI=true if it cannot)
#   sandbox.sh rootfs                  build the cached root file system once (debootstrap)
#   sandbox.sh create DIR              fresh copy of the cached root file system, with the project installed
#   sandbox.sh boot DIR [NETNS]        boot DIR; with NETNS, inside that network namespace (made if absent)
#   sandbox.sh leader DIR              print the container's PID 1 (as seen from the host)
#   sandbox.sh exec DIR CMD...         run CMD inside the booted container
#   sandbox.sh stop DIR                power the container off (kill it if it does not stop), remove NETNS
#   sandbox.sh packages                print the root file system's package list (a cache key for the VM tier)
#   sandbox.sh rootfs-path             build the cached root file system if needed, print where it is
#   sandbox.sh promtool                extract Debian's promtool into the cache once, print its path
#
# HOMELAB_ROOTFS_FLAVOUR=package: a root file system with man-db and prometheus-node-exporter too,
# and `create` installs nothing of ours (the package group installs the .deb into it).
#
# The host's PID 1 is not systemd, so nspawn runs with --register=no --keep-unit (it has no
# machined to register with and no unit of its own to move into).
set -euo pipefail

SUITE=${HOMELAB_SUITE:-bookworm}
CACHE=${HOMELAB_CACHE:-/var/cache/homelab-e2e}
# How the root file system is made, beyond the package list; bump it when rootfs() changes.
RECIPE=1
PACKAGES=systemd,systemd-sysv,libpam-systemd,dbus,polkitd,pkexec,logrotate,curl,procps,iproute2,python3-minimal
FLAVOUR=${HOMELAB_ROOTFS_FLAVOUR:-}
case "$FLAVOUR" in
    "") NAME="rootfs-$SUITE" ;;
    package) NAME="rootfs-$SUITE-package" PACKAGES="$PACKAGES,man-db,prometheus-node-exporter" ;;
    *) echo "sandbox: unknown HOMELAB_ROOTFS_FLAVOUR=$FLAVOUR" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
# Keyed by what goes into it, so that a changed package list builds a new one.
ROOTFS="$CACHE/$NAME-$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE" | sha256sum | cut -c1-12)"
top=$(cd "$here/../.." && pwd)

die() { echo "sandbox: $*" >&2; exit 1; }

prereqs() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v curl >/dev/null || missing+=(curl)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nsenter >/dev/null || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]}"
    echo "sandbox: installing host packages: ${missing[*]}" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        die "could not install ${missing[*]}; install them by hand (apt-get install ${missing[*]})"
    fi
}

# The Debian mirror the host's own apt sources name: the only one this machine can reach.
mirror() {
    local m
    m=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$m" ] || m=$(grep -hoE '^deb +(\[[^]]*\] +)?[^ ]+' /etc/apt/sources.list 2>/dev/null | awk '{print $NF}' | grep -v security | head -n1 || true)
    [ -n "$m" ] || die "no Debian mirror found in the host's apt sources"
    echo "$m"
}

rootfs() {
    [ -e "$ROOTFS/.complete" ] && return 0
    prereqs
    mkdir -p "$CACHE"
    # One builder at a time; a half-built tree from an interrupted run is thrown away.
    exec 9>"$CACHE/.lock"
    flock 9
    [ -e "$ROOTFS/.complete" ] && return 0
    rm -rf "$ROOTFS.tmp"
    echo "sandbox: building the $SUITE root file system in $ROOTFS (about a minute, once)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    # A quiet, fast container: no getty on the console, a fixed machine id.
    systemd-machine-id-setup --root="$ROOTFS.tmp" >/dev/null 2>&1 || true
    echo homelab-sandbox >"$ROOTFS.tmp/etc/hostname"
    touch "$ROOTFS.tmp/.complete"
    # Older builds of this suite (another package list) are of no more use.
    # (Only this flavour's: the name is followed by the 12 hex digits of the hash.)
    find "$CACHE" -maxdepth 1 -regextype posix-extended -regex ".*/$NAME-[0-9a-f]{12}(\.tmp)?" \
        ! -name "$(basename "$ROOTFS").tmp" -exec rm -rf {} +
    rm -rf "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
}

create() {
    local dir=$1
    rootfs
    [ -e "$dir" ] && die "$dir exists"
    mkdir -p "$(dirname "$dir")"
    cp -a --reflink=auto "$ROOTFS" "$dir"
    [ "$FLAVOUR" = package ] && return 0
    make -s -C "$top" install DESTDIR="$dir" PREFIX=/usr >/dev/null
}

# Debian's promtool (package prometheus), extracted once into the cache and run on the host:
# installing the package would start a Prometheus server; the e2e checks need only the tool.
promtool() {
    local dir="$CACHE/promtool" tmp
    if [ ! -x "$dir/usr/bin/promtool" ]; then
        mkdir -p "$CACHE"
        exec 8>"$CACHE/.promtool.lock"
        flock 8
        if [ ! -x "$dir/usr/bin/promtool" ]; then
            tmp=$(mktemp -d "$CACHE/promtool.XXXXXX")
            (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) ||
                { apt-get update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get download -qq prometheus >/dev/null); } ||
                { rm -rf "$tmp"; die "cannot download Debian's prometheus package (for promtool)"; }
            dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
            rm -rf "$dir"
            mv "$tmp/x" "$dir"
            rm -rf "$tmp"
        fi
    fi
    echo "$dir/usr/bin/promtool"
}

leader() {
    local dir=$1 nspawn pid
    nspawn=$(cat "$dir.nspawn-pid" 2>/dev/null) || die "$dir is not booted"
    # PID 1 of the container is the child of nspawn that runs systemd.
    for pid in $(pgrep -P "$nspawn" 2>/dev/null); do
        if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = systemd ]; then echo "$pid"; return 0; fi
    done
    return 1
}

boot() {
    local dir=$1 netns=${2:-} args=()
    [ -d "$dir" ] || die "$dir does not exist"
    if [ -n "$netns" ]; then
        ip netns add "$netns" 2>/dev/null || true
        ip -n "$netns" link set lo up
        args+=(--network-namespace-path="/run/netns/$netns")
        echo "$netns" >"$dir.netns"
    fi
    systemd-nspawn -q -D "$dir" --register=no --keep-unit -b --console=read-only \
        --machine="homelab-$(basename "$dir")" "${args[@]}" >"$dir.console" 2>&1 &
    echo $! >"$dir.nspawn-pid"
    local i pid=
    for i in $(seq 1 100); do
        pid=$(leader "$dir") && break
        kill -0 "$(cat "$dir.nspawn-pid")" 2>/dev/null || { cat "$dir.console" >&2; die "nspawn exited while booting"; }
        sleep 0.1
    done
    [ -n "$pid" ] || die "container PID 1 did not appear"
    # "degraded" is still booted: report it, the tests decide what matters.
    # Right after PID 1 appears its private bus may not answer yet: ask again until it does.
    local state=
    for i in $(seq 1 600); do
        state=$(timeout 120 nsenter -t "$pid" -a systemctl is-system-running --wait 2>/dev/null || true)
        case "$state" in running|degraded|maintenance|stopping) break ;; esac
        sleep 0.1
    done
    case "$state" in
        running|degraded) ;;
        *) cat "$dir.console" >&2; die "boot did not finish (state: ${state:-none})" ;;
    esac
    echo "$pid"
}

exec_in() {
    local dir=$1; shift
    local pid
    pid=$(leader "$dir") || die "$dir is not booted"
    exec nsenter -t "$pid" -a "$@"
}

stop() {
    local dir=$1 nspawn pid i
    nspawn=$(cat "$dir.nspawn-pid" 2>/dev/null || true)
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        pid=$(leader "$dir" || true)
        [ -n "$pid" ] && timeout 10 nsenter -t "$pid" -a systemctl poweroff >/dev/null 2>&1 || true
        for i in $(seq 1 100); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$nspawn" 2>/dev/null && { kill -KILL "$nspawn" 2>/dev/null || true; sleep 0.2; }
    fi
    rm -f "$dir.nspawn-pid"
    if [ -f "$dir.netns" ]; then ip netns delete "$(cat "$dir.netns")" 2>/dev/null || true; rm -f "$dir.netns"; fi
}

cmd=${1:-}; shift || true
case "$cmd" in
    prereqs) prereqs ;;
    rootfs) rootfs ;;
    create) create "$@" ;;
    boot) boot "$@" ;;
    leader) leader "$@" ;;
    exec) exec_in "$@" ;;
    stop) stop "$@" ;;
    packages) echo "$SUITE $PACKAGES" ;;
    rootfs-path) rootfs; echo "$ROOTFS" ;;
    promtool) promtool ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
esac

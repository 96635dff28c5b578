#!/usr/bin/env bash
# The VM tier: the experiment cases on a real kernel with cgroup v2, and the wake alarm scheduled
# power-offs set through the kernel's RTC driver (rtc_cmos on qemu's CMOS clock); Debian 12 in qemu.
#
#   vm.sh prereqs     install qemu and mkfs.ext4 when missing (fails under CI=true if it cannot)
#   vm.sh image       build the cached VM base once: the e2e root file system plus Debian's cloud kernel
#   vm.sh run [CASE...]  build the project, make a fresh disk with `make install DESTDIR=` and the
#                     cases, boot it (up to three times, for the wake cases), print each case's
#                     result; exits non-zero on any failure
#
# HOMELAB_VM_KEEP=1 keeps the run's directory (disk, each boot's console and report logs);
# HOMELAB_VM_TCG=1 skips KVM; HOMELAB_VM_TIMEOUT (seconds, default 900) bounds all boots together.
#
# The base lives outside the clone, in $CACHE/vm-bookworm-<key>, the key being a hash of the package
# lists and of this recipe, so a changed list builds a new one. Each run copies it, installs the
# project into the copy, packs it into an ext4 image and boots the extracted kernel and initrd
# (qemu -kernel): KVM when /dev/kvm answers, else software emulation (TCG). The cases
# (tests/vm/cases.sh) run in the VM as a unit after multi-user.target and write their report to a
# second serial port (a file on the host); the first serial port is the console log.
#
# The wake cases need more than one boot of the same disk: a real machine keeps the RTC alarm
# through a power-off, qemu does not keep it from one run to the next. Boot 1 has a scheduled
# power-off with a wake time fire; homelab-vm-wakealarm.service prints what the RTC alarm holds
# when it is stopped during that power-off (`wakealarm=EPOCH now=EPOCH` on the report port).
# This script then boots the disk again, giving the VM the boot's number and that line on the
# kernel command line (homelab_vm.phase=N homelab_vm.wakealarm=EPOCH homelab_vm.stopped_at=EPOCH),
# where the cases compare it with what the product recorded and play the firmware's part: they
# write the alarm back before cancelling. At most three boots.
set -euo pipefail

CACHE=${HOMELAB_CACHE:-/var/cache/homelab-e2e}
# Added to the e2e root file system: the kernel and its initrd, jq for the cases' JSON checks.
VM_PACKAGES="linux-image-cloud-amd64 initramfs-tools jq"
# Bump when the image recipe below changes.
RECIPE=1
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
SANDBOX=$top/tests/e2e/sandbox.sh

die() { echo "vm: $*" >&2; exit 1; }
log() { echo "vm: $*" >&2; }

prereqs() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
        die "could not install ${missing[*]}; install them by hand (apt-get install ${missing[*]})"
    fi
}

base_dir() {
    local key
    key=$( { HOMELAB_SUITE=bookworm bash "$SANDBOX" packages; echo "$VM_PACKAGES"; echo "$RECIPE"; } | sha256sum | cut -c1-12)
    echo "$CACHE/vm-bookworm-$key"
}

image() {
    local base
    base=$(base_dir)
    [ -e "$base/.complete" ] && { echo "$base"; return 0; }
    prereqs
    local rootfs
    rootfs=$(HOMELAB_SUITE=bookworm bash "$SANDBOX" rootfs-path)
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.vm-lock"
    flock 8
    [ -e "$base/.complete" ] && { echo "$base"; return 0; }
    rm -rf "$base.tmp"
    mkdir -p "$base.tmp"
    log "building the VM base in $base (a few minutes, once)"
    cp -a --reflink=auto "$rootfs" "$base.tmp/tree"
    rm -f "$base.tmp/tree/.complete"
    # The packages, installed by the image's own apt (the host's mirror, as debootstrap had).
    systemd-nspawn -q -D "$base.tmp/tree" --register=no --keep-unit --resolv-conf=replace-host \
        sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $VM_PACKAGES && apt-get clean" \
        >"$base.tmp/apt.log" 2>&1 || { tail -n 30 "$base.tmp/apt.log" >&2; die "installing $VM_PACKAGES failed (log: $base.tmp/apt.log)"; }
    local t=$base.tmp/tree
    cp "$(ls "$t"/boot/vmlinuz-* | sort -V | tail -n1)" "$base.tmp/vmlinuz"
    cp "$(ls "$t"/boot/initrd.img-* | sort -V | tail -n1)" "$base.tmp/initrd.img"
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$t/etc/fstab"
    # No login prompts: the console is a log, and the cases run as a unit.
    ln -sf /dev/null "$t/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$t/etc/systemd/system/serial-getty@ttyS1.service"
    ln -sf /dev/null "$t/etc/systemd/system/getty@tty1.service"
    echo homelab-vm >"$t/etc/hostname"
    touch "$base.tmp/.complete"
    rm -rf "$base"
    mv "$base.tmp" "$base"
    # Bases of older package lists or recipes are no longer used.
    local old
    for old in "$CACHE"/vm-bookworm-*; do
        [ "$old" = "$base" ] || rm -rf "$old"
    done
    echo "$base"
}

# The unit that runs the cases once the VM has booted, then powers it off whatever they say.
CASES_UNIT='[Unit]
Description=homelab VM tier: the cases (tests/vm/cases.sh)
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/lib/homelab-vm/cases.sh
TimeoutStartSec=20min
StandardOutput=journal+console
'

# Started by the wake cases before a scheduled power-off; its stop, during that power-off (after
# the power action armed the RTC), prints the alarm on the report port.
WAKEALARM_UNIT='[Unit]
Description=homelab VM tier: the RTC wake alarm at the power-off, on the report port

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/usr/local/lib/homelab-vm/cases.sh --print-wakealarm
'
# The most boots of one run (the wake cases need three).
MAX_BOOTS=3

# qemu in the background with ACCEL (kvm or tcg), boot number BOOT and more kernel arguments;
# its pid in $work/qemu.pid, the logs in $work/console-BOOT.log and $work/report-BOOT.log.
start_qemu() {
    local accel=$1 boot=$2 args=$3 cpu=max
    [ "$accel" = kvm ] && cpu=host
    rm -f "$work/console-$boot.log" "$work/report-$boot.log"
    # In a group whose stderr is the log: a crash of qemu is reported there, not on the terminal.
    { qemu-system-x86_64 -nodefaults -display none -no-reboot \
        -accel "$accel" -cpu "$cpu" -m 2048 -smp 2 \
        -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1 homelab_vm.phase=$boot $args" \
        -drive "file=$work/disk.img,format=raw,if=virtio" \
        -serial "file:$work/console-$boot.log" -serial "file:$work/report-$boot.log" -pidfile "$work/qemu.qpid" \
        >"$work/qemu.log" 2>&1 </dev/null || true; } 2>>"$work/qemu.log" &
    echo $! >"$work/qemu.pid"
}

stop_qemu() {
    local pid _
    pid=$(cat "$work/qemu.pid" 2>/dev/null) || return 0
    # qemu itself (its own pid file); the group that waits for it then ends.
    if [ -s "$work/qemu.qpid" ]; then kill "$(cat "$work/qemu.qpid")" 2>/dev/null || true; fi
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$work/qemu.pid" "$work/qemu.qpid"
}

cleanup() {
    stop_qemu || true
    if [ -n "${HOMELAB_VM_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}

run() {
    local t0=$SECONDS accel boot args line deadline
    prereqs
    base=$(image)
    work=$(mktemp -d /var/tmp/homelab-vm.XXXXXX)
    trap cleanup EXIT
    # A fresh disk: the cached base, the project as `make install DESTDIR=` puts it, the cases.
    cp -a --reflink=auto "$base/tree" "$work/tree"
    make -s -C "$top" install DESTDIR="$work/tree" PREFIX=/usr >"$work/install.log" 2>&1 ||
        { cat "$work/install.log" >&2; die "make install DESTDIR=$work/tree failed"; }
    install -D -m 755 "$here/cases.sh" "$work/tree/usr/local/lib/homelab-vm/cases.sh"
    install -D -m 644 -t "$work/tree/usr/local/lib/homelab-vm" "$here/hog.py" "$here/burn.py"
    # Arguments name the cases to run (all by default).
    printf '%s' "$CASES_UNIT" | sed "s|^ExecStart=.*|& $*|" >"$work/tree/etc/systemd/system/homelab-vm-cases.service"
    printf '%s' "$WAKEALARM_UNIT" >"$work/tree/etc/systemd/system/homelab-vm-wakealarm.service"
    mkdir -p "$work/tree/etc/systemd/system/multi-user.target.wants"
    ln -sf ../homelab-vm-cases.service "$work/tree/etc/systemd/system/multi-user.target.wants/"
    mkfs.ext4 -q -F -L root -d "$work/tree" "$work/disk.img" 3G
    rm -rf "$work/tree"
    log "disk ready in $((SECONDS - t0)) s"

    # The whole run (every boot) is bounded; the VM powers itself off after the cases.
    deadline=$((SECONDS + ${HOMELAB_VM_TIMEOUT:-900}))
    first_boot
    # Another boot of the same disk while a boot ended in a power-off the cases had scheduled
    # (the stop line of homelab-vm-wakealarm.service, no `summary`).
    boot=1
    while [ $boot -lt $MAX_BOOTS ] && ! grep -aq '^summary ' "$work/report-$boot.log" 2>/dev/null; do
        line=$(grep -a -o '^wakealarm=[0-9]* now=[0-9]*' "$work/report-$boot.log" | tail -n1) || break
        args=$(sed -E 's/^wakealarm=([0-9]*) now=([0-9]*)$/homelab_vm.wakealarm=\1 homelab_vm.stopped_at=\2/' <<<"$line")
        boot=$((boot + 1))
        log "boot $boot: the cases powered the VM off (at the stop: $line); booting the disk again"
        start_qemu "$accel" "$boot" "$args"
        wait_vm "$boot"
    done
    report "${accel%%,*}" $((SECONDS - t0)) "$boot"
}

# Boot 1: KVM when /dev/kvm answers and the kernel says something within 20 s (nested KVM has been
# seen to hang before the first line, and to refuse -cpu host), else software emulation. Sets
# $accel (run's) to the one used; returns once the VM has stopped.
first_boot() {
    local _
    accel=
    if [ -w /dev/kvm ] && [ -z "${HOMELAB_VM_TCG:-}" ]; then
        start_qemu kvm 1 ""
        for _ in $(seq 1 100); do
            [ -s "$work/console-1.log" ] && { accel=kvm; break; }
            kill -0 "$(cat "$work/qemu.pid")" 2>/dev/null || break
            sleep 0.2
        done
        if [ -z "$accel" ]; then
            log "KVM did not boot (no console line in 20 s; qemu: $(tr '\n' ' ' <"$work/qemu.log" | cut -c1-160)); using TCG"
            stop_qemu
        fi
    fi
    if [ -z "$accel" ]; then
        accel=tcg,thread=multi
        start_qemu "$accel" 1 ""
    fi
    wait_vm 1
}

# Waits for the VM of boot BOOT to power off, at most until $deadline.
wait_vm() {
    local pid
    pid=$(cat "$work/qemu.pid")
    log "boot $1 with $accel; console: $work/console-$1.log"
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge "$deadline" ]; then
            log "the VM did not finish within ${HOMELAB_VM_TIMEOUT:-900} s; stopping it"
            stop_qemu
            break
        fi
        sleep 1
    done
    wait "$pid" 2>/dev/null || true
    rm -f "$work/qemu.pid"
}

# Prints each case's result from the reports of boots 1 to BOOTS (the VM's journal for a failed
# one) and `N passed, N failed`.
report() {
    local accel=$1 secs=$2 boots=$3 line expected=() done=() passed=0 failed=0 finished='' c b=0
    while IFS= read -r line; do
        line=${line%$'\r'}
        case "$line" in
            "boot "*) b=${line#boot }; [ "$b" -eq 1 ] || echo "vm: boot $b" ;;
            "cases "*) read -ra expected <<<"${line#cases }" ;;
            "ok "*) echo "vm case ${line#ok } ... ok"; done+=("${line#ok }"); passed=$((passed + 1)) ;;
            "FAILED "*) echo "vm case ${line#FAILED } ... FAILED"; done+=("${line#FAILED }"); failed=$((failed + 1)) ;;
            "summary "*) finished=yes ;;
            wakealarm=*) echo "  boot $b powered off; at the stop of homelab-vm-wakealarm.service: $line" ;;
            *) echo "$line" ;;
        esac
    done < <(for b in $(seq 1 "$boots"); do echo "boot $b"; cat "$work/report-$b.log" 2>/dev/null; done)
    if [ ${#expected[@]} -eq 0 ]; then
        echo "vm: the cases never started; the console's last lines:"
        tail -n 60 "$work/console-1.log" 2>/dev/null | sed 's/^/| /'
        failed=$((failed + 1))
    elif [ -z "$finished" ]; then
        for c in "${expected[@]}"; do
            [[ " ${done[*]} " == *" $c "* ]] || { echo "vm case $c ... FAILED (no result: the VM stopped)"; failed=$((failed + 1)); }
        done
        echo "vm: the VM stopped before the end of the cases (boot $boots); the console's last lines:"
        tail -n 60 "$work/console-$boots.log" 2>/dev/null | sed 's/^/| /'
    fi
    echo "vm tier: $accel, $boots boot(s), $secs s"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

cmd=${1:-}; shift || true
case "$cmd" in
    prereqs) prereqs ;;
    image) image ;;
    run) run "$@" ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
esac

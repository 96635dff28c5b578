#!/usr/bin/env bash
# Benchmarks for the experiments, in a booted sandbox; figures go to benches/README.md.
#  (a) `brainctl status --json` with 200 experiment units loaded, median of 20 runs, beside the
#      same status gathered the original's way: one `systemctl show` per unit, in the same run;
#  (b) `brainctl run` launch latency beside `systemd-run` with the same properties (both wait for
#      the start job to end; brainctl's ends when the coordinator admits it), median of 20 each.
# Usage: bash benches/experiments.sh   (as root; boots its own container and removes it)
set -euo pipefail
cd "$(dirname "$0")/.."
SBX=tests/e2e/sandbox.sh
DIR=${HOMELAB_BENCH_DIR:-/var/tmp/homelab-bench-exp}
NETNS=hlbench-exp-$$
N=${BENCH_UNITS:-200}
RUNS=${BENCH_RUNS:-20}

cleanup() { bash "$SBX" stop "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR" "$DIR".*; }
trap cleanup EXIT
cleanup
make -s build
bash "$SBX" create "$DIR" >/dev/null
bash "$SBX" boot "$DIR" "$NETNS" >/dev/null
inside() { bash "$SBX" exec "$DIR" "$@"; }
inside sh -c 'systemd-sysusers >/dev/null 2>&1; systemd-tmpfiles --create >/dev/null 2>&1; systemctl daemon-reload'

echo "== $N experiment units" >&2
# Admit all of them: this measures status gathering, not admission.
inside sh -c "printf 'MAX_CONCURRENT_EXPERIMENTS=1000\nTOTAL_RAM_LIMIT_GB=1000\n' > /etc/brain-in-jar/coordinator.env"
inside sh -c "mkdir -p /etc/brain-in-jar/experiments && cd /etc/brain-in-jar/experiments &&
  for i in \$(seq -w 1 $N); do printf 'EXPERIMENT_RAM_LIMIT=64M\nEXPERIMENT_CPU_QUOTA=10%%\nEXPERIMENT_COMMAND=/bin/sleep infinity\nEXPERIMENT_ENABLED=yes\n' > bench\$i.env; done &&
  systemctl daemon-reload && systemctl restart brain-experiment-coordinator && timeout 300 systemctl start brain-experiment.target &&
  systemctl list-units --no-legend --plain 'brain-experiment@*' | grep -c running"

# Everything timed runs inside the container in one shell, so nsenter is not measured.
median_ms() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f %.1f %.1f\n", m/1e6, a[1]/1e6, a[NR]/1e6}'; }

echo "== (a) status of all experiments, $RUNS runs each" >&2
read -r status_med status_min status_max < <(inside sh -c "
  for r in \$(seq $RUNS); do s=\$(date +%s%N); brainctl status --json >/dev/null; e=\$(date +%s%N); echo \$((e-s)); done" | median_ms)
count=$(inside sh -c 'brainctl status --json' | grep -c '"unit"')
read -r show_med show_min show_max < <(inside sh -c "
  units=\$(systemctl list-units --no-legend --plain 'brain-experiment@*' 'brain-run-*' | awk '{print \$1}')
  for r in \$(seq $RUNS); do s=\$(date +%s%N)
    for u in \$units; do systemctl show \"\$u\" -p ActiveState,SubState,MainPID,MemoryCurrent,MemoryMax,CPUQuotaPerSecUSec,NRestarts,ExecMainStatus,ExecMainStartTimestamp >/dev/null; done
    e=\$(date +%s%N); echo \$((e-s)); done" | median_ms)

echo "== (b) launch latency, $RUNS launches each" >&2
read -r run_med run_min run_max < <(inside sh -c "
  for r in \$(seq -w 1 $RUNS); do s=\$(date +%s%N); brainctl run br\$r --memory 64M --cpu 50% -- /bin/sleep infinity >/dev/null; e=\$(date +%s%N); echo \$((e-s)); done" | median_ms)
read -r sr_med sr_min sr_max < <(inside sh -c "
  for r in \$(seq -w 1 $RUNS); do s=\$(date +%s%N)
    systemd-run --quiet --unit=sr-\$r -p Type=exec -p MemoryMax=64M -p CPUQuota=50% -p Slice=brain-experiments.slice \
      -p PartOf=brain-experiment.target -p Restart=on-failure -p User=brain -p Group=brain -p NoNewPrivileges=yes \
      -p ProtectSystem=strict -p ProtectHome=read-only -p PrivateTmp=yes /bin/sleep infinity
    e=\$(date +%s%N); echo \$((e-s)); done" | median_ms)

cat <<EOF

| benchmark ($(date +%F), $(nproc) cores, systemd $(inside systemctl --version | head -1 | awk '{print $2}') in systemd-nspawn) | median | min | max |
|---|---|---|---|
| \`brainctl status --json\`, $count experiment units | ${status_med} ms | ${status_min} ms | ${status_max} ms |
| one \`systemctl show\` per unit (the original's way), same units | ${show_med} ms | ${show_min} ms | ${show_max} ms |
| \`brainctl run\` (transient unit, start job ended: admitted) | ${run_med} ms | ${run_min} ms | ${run_max} ms |
| \`systemd-run\`, same properties (start job ended) | ${sr_med} ms | ${sr_min} ms | ${sr_max} ms |
EOF

#!/usr/bin/env bash
# The one test command (`make test`): host prerequisites, formatting, lints, unit tests, e2e suite,
# VM tier.
# Under CI=true a missing prerequisite fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }

step "host prerequisites"
[ "$(id -u)" = 0 ] || { echo "make test boots systemd containers for the e2e suite: run it as root" >&2; exit 1; }
bash tests/e2e/sandbox.sh prereqs
bash tests/vm/vm.sh prereqs
# lintian checks the package (make deb); dpkg-dev builds it.
for tool in lintian:lintian dpkg-gencontrol:dpkg-dev; do
    command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null; }
done
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
# The e2e suite is a test target of its own that --all-targets leaves out (test = false).
cargo clippy --locked --test e2e -- -D warnings

# The test tiers: each runs even when an earlier one failed, and the run ends with a summary per
# tier (cases passed and failed, time taken) and the total.
summary=() total_passed=0 total_failed=0 status=0
tier() {
    local name=$1; shift
    step "$name"
    local start=$SECONDS log rc counts passed failed
    log=$(mktemp)
    set +e
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    # cargo test: "test result: ok. 74 passed; 0 failed; ..."; the e2e tiers: "N passed, N failed".
    counts=$(awk '/^test result: / {p += $4; f += $6} /^[0-9]+ passed, [0-9]+ failed/ {p += $1; f += $3}
                  END {print p + 0, f + 0}' "$log")
    rm -f "$log"
    read -r passed failed <<<"$counts"
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
    summary+=("$(printf '  %-44s %4d passed, %3d failed, %5ds' "$name" "$passed" "$failed" $((SECONDS - start)))")
    total_passed=$((total_passed + passed)) total_failed=$((total_failed + failed))
    [ "$rc" -eq 0 ] || status=1
}

tier "unit tests (cargo test)" cargo test --locked
# The package as Debian's checker sees it: no error (the warnings kept are listed in docs/packaging.md).
tier "package (make deb, lintian)" sh -c 'deb=$(make -s deb | tail -n1) && lintian --fail-on error "$deb" && echo "1 passed, 0 failed"'
tier "e2e suite on booted systemd (nspawn: 252, 257)" make -s e2e
tier "VM tier (cgroup v2, RTC, qemu)" make -s e2e-vm

printf '\n==> summary\n' >&2
printf '%s\n' "${summary[@]}" >&2
echo "$total_passed passed, $total_failed failed"
exit "$status"

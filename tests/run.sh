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
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test (unit and integration tests)"
cargo test --locked

step "e2e suite on booted systemd"
make -s e2e

step "VM tier: the experiment cases on a real kernel (cgroup v2, qemu)"
make -s e2e-vm

# homelab: build, install (DESTDIR, PREFIX), test, demo, bench.
PREFIX ?= /usr
DESTDIR ?=
BINDIR := $(PREFIX)/bin
UNITDIR := $(PREFIX)/lib/systemd/system
SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
TMPFILESDIR := $(PREFIX)/lib/tmpfiles.d
POLKITDIR := $(PREFIX)/share/polkit-1/rules.d
GENERATORDIR := $(PREFIX)/lib/systemd/system-generators
DOCDIR := $(PREFIX)/share/doc/homelab
LOGROTATEDIR := /etc/logrotate.d
CARGO ?= cargo
# Where the binaries land, compiled in (build.rs); the same for every cargo call, so that the
# build, the tests and the e2e suite share one compiled library instead of rebuilding it.
export HOMELAB_BINDIR := $(BINDIR)

BINARIES := shutdown-service inference-service homelab-power-action homelab-exec brainctl brain-coordinator brain-admit

.PHONY: all build install test e2e e2e-vm demo demo-stop bench bench-original clean

all: build

build:
	$(CARGO) build --release --locked

install: build
	install -D -m 755 -t $(DESTDIR)$(BINDIR) $(addprefix target/release/,$(BINARIES))
	install -d $(DESTDIR)$(UNITDIR)
	for f in systemd/*; do sed 's|@bindir@|$(BINDIR)|g' "$$f" > "$(DESTDIR)$(UNITDIR)/$${f#systemd/}"; chmod 644 "$(DESTDIR)$(UNITDIR)/$${f#systemd/}"; done
	install -D -m 755 target/release/brain-experiment-generator $(DESTDIR)$(GENERATORDIR)/brain-experiment-generator
	install -D -m 644 -t $(DESTDIR)$(SYSUSERSDIR) sysusers.d/*.conf
	install -D -m 644 -t $(DESTDIR)$(TMPFILESDIR) tmpfiles.d/*.conf
	install -D -m 644 -t $(DESTDIR)$(POLKITDIR) polkit/*.rules
	install -D -m 644 -t $(DESTDIR)$(DOCDIR) README.md
	for f in logrotate/*; do [ -e "$$f" ] || continue; install -D -m 644 "$$f" "$(DESTDIR)$(LOGROTATEDIR)/$${f#logrotate/}"; done
	@# Experiments come back after a reboot: brain-experiment.target is enabled at install.
	if command -v systemctl >/dev/null; then systemctl $(if $(DESTDIR),--root=$(DESTDIR)) enable brain-experiment.target brain-experiment-coordinator.service; fi
	@# On a live system (no DESTDIR) apply users and directories now, as a package's postinst would.
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload; fi

# The README's one test command: formatting, lints, unit tests, the e2e suite on booted systemd,
# then the VM tier.
test:
	bash tests/run.sh

# Only the e2e suite (as root); pass FILTER=name to run some cases.
e2e: build
	$(CARGO) test --release --locked --test e2e -- $(FILTER)

# Only the VM tier (as root): the experiment cases on a real kernel with cgroup v2, in qemu;
# FILTER=case names some of tests/vm/cases.sh's cases.
e2e-vm: build
	bash tests/vm/vm.sh run $(FILTER)

demo:
	bash tests/e2e/demo.sh start

demo-stop:
	bash tests/e2e/demo.sh stop

bench:
	bash benches/run.sh
	bash benches/experiments.sh

# Our read endpoints beside the original Python services (as root); HOMELAB_ORIGINAL names a
# checkout of TheGreatGooo/HomeLabSmith at fc4de87 (benches/README.md says how to get one).
bench-original:
	bash benches/original.sh

clean:
	$(CARGO) clean

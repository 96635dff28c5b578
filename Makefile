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
MANDIR := $(PREFIX)/share/man
# Where Debian's bash-completion, zsh and fish look for completions of installed commands.
BASHCOMPDIR := $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR := $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR := $(PREFIX)/share/fish/vendor_completions.d
CARGO ?= cargo
# Where the binaries land, compiled in (build.rs); the same for every cargo call, so that the
# build, the tests and the e2e suite share one compiled library instead of rebuilding it.
export HOMELAB_BINDIR := $(BINDIR)

BINARIES := shutdown-service inference-service homelab-power-action homelab-exec brainctl brain-coordinator brain-admit

# The package: `make deb` (DEB_VERSION= to build another version, as the e2e upgrade case does).
DEB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_BUILD := target/deb/build-$(DEB_VERSION)
DEB_ROOT := $(DEB_BUILD)/root
DEB_FILE := target/deb/homelab_$(DEB_VERSION)_$(DEB_ARCH).deb

.PHONY: all build install install-files test e2e e2e-vm demo demo-stop bench bench-original clean deb

all: build

build:
	$(CARGO) build --release --locked

# The files only, as they land on disk (what the package ships).
install-files: build
	install -D -m 755 -t $(DESTDIR)$(BINDIR) $(addprefix target/release/,$(BINARIES))
	install -d $(DESTDIR)$(UNITDIR)
	for f in systemd/*; do sed 's|@bindir@|$(BINDIR)|g' "$$f" > "$(DESTDIR)$(UNITDIR)/$${f#systemd/}"; chmod 644 "$(DESTDIR)$(UNITDIR)/$${f#systemd/}"; done
	install -D -m 755 target/release/brain-experiment-generator $(DESTDIR)$(GENERATORDIR)/brain-experiment-generator
	install -D -m 644 -t $(DESTDIR)$(SYSUSERSDIR) sysusers.d/*.conf
	install -D -m 644 -t $(DESTDIR)$(TMPFILESDIR) tmpfiles.d/*.conf
	install -D -m 644 -t $(DESTDIR)$(POLKITDIR) polkit/*.rules
	@# The docs keep the repository's layout, so that the links between them hold once installed
	@# (the units' Documentation= lines point into $(DOCDIR)/docs).
	install -D -m 644 -t $(DESTDIR)$(DOCDIR) README.md
	install -D -m 644 -t $(DESTDIR)$(DOCDIR)/docs docs/*.md
	install -D -m 644 -t $(DESTDIR)$(DOCDIR)/benches benches/README.md
	for f in logrotate/*; do [ -e "$$f" ] || continue; install -D -m 644 "$$f" "$(DESTDIR)$(LOGROTATEDIR)/$${f#logrotate/}"; done
	install -D -m 644 -t $(DESTDIR)$(MANDIR)/man1 man/*.1
	install -D -m 644 -t $(DESTDIR)$(MANDIR)/man8 man/*.8
	@# Completions come from the command line's own definition (clap_complete).
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	target/release/brainctl completions bash > $(DESTDIR)$(BASHCOMPDIR)/brainctl
	target/release/brainctl completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_brainctl
	target/release/brainctl completions fish > $(DESTDIR)$(FISHCOMPDIR)/brainctl.fish
	chmod 644 $(DESTDIR)$(BASHCOMPDIR)/brainctl $(DESTDIR)$(ZSHCOMPDIR)/_brainctl $(DESTDIR)$(FISHCOMPDIR)/brainctl.fish

# Files, then what a package's postinst does: units enabled; on a live system users and folders.
install: install-files
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

# Only the VM tier (as root): the experiment cases on a real kernel with cgroup v2, and the RTC wake
# alarm of a scheduled power-off, in qemu; FILTER=case names some of tests/vm/cases.sh's cases.
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

# The Debian package, with dpkg-deb (no tool beyond dpkg-dev): the files of install-files,
# stripped, man pages compressed, the maintainer scripts of debian/, every file under /etc a
# conffile, Depends from debian/control plus libc from dpkg-shlibdeps.
deb: build
	rm -rf $(DEB_BUILD)
	$(MAKE) -s install-files DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=/usr
	strip --strip-unneeded --remove-section=.comment --remove-section=.note \
		$(addprefix $(DEB_ROOT)/usr/bin/,$(BINARIES)) $(DEB_ROOT)/usr/lib/systemd/system-generators/brain-experiment-generator
	gzip -9n $(DEB_ROOT)/usr/share/man/man*/*
	install -m 644 debian/copyright $(DEB_ROOT)/usr/share/doc/homelab/copyright
	gzip -9nc debian/changelog > $(DEB_ROOT)/usr/share/doc/homelab/changelog.gz
	chmod 644 $(DEB_ROOT)/usr/share/doc/homelab/changelog.gz
	install -d -m 755 $(DEB_ROOT)/DEBIAN
	install -m 755 debian/postinst debian/prerm debian/postrm $(DEB_ROOT)/DEBIAN/
	cd $(DEB_ROOT) && find etc -type f | sed 's|^|/|' | sort > DEBIAN/conffiles
	dpkg-shlibdeps -T$(DEB_BUILD)/substvars -e $(addprefix $(DEB_ROOT)/usr/bin/,$(BINARIES)) \
		$(DEB_ROOT)/usr/lib/systemd/system-generators/brain-experiment-generator
	dpkg-gencontrol -phomelab -v$(DEB_VERSION) -P$(DEB_ROOT) -T$(DEB_BUILD)/substvars -f$(DEB_BUILD)/files -Vmisc:Depends=
	cd $(DEB_ROOT) && find usr etc -type f -exec md5sum {} + | sort -k2 > DEBIAN/md5sums
	chmod 644 $(DEB_ROOT)/DEBIAN/md5sums $(DEB_ROOT)/DEBIAN/conffiles
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(DEB_FILE) >/dev/null
	@echo $(DEB_FILE)

clean:
	$(CARGO) clean

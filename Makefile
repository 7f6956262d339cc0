# The contract with a new user on a fresh Debian machine:
#   make demo   set everything up, then run the station demo on embedded defaults
#   make test   set everything up, then run every test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# System tools the project runs: ffmpeg/ffprobe (media), fusermount3 (simulated recorder
# volumes), curl (the baseline of the upload benchmark, tests/bench/upload.py), python3-venv (the
# virtual environment); systemd-analyze and busctl (systemd: the unit's seccomp groups,
# systemd-timedated over D-Bus), dbus-daemon (a private bus for the timedated stand-in) and libseccomp2
# (the unit's filter installed in tests). Under CI a missing tool fails the tests that need it instead
# of skipping them (tests/prerequisites.py). mosquitto: the MQTT tests (tests/mqtt/) start a real broker
# on a free port with TLS, client certificates and the agency ACL of config/mosquitto/. chromium: the browser
# tests (tests/browser/) drive Debian's /usr/bin/chromium with Playwright's Python package, which never
# downloads a browser of its own; fonts-wqy-microhei gives it Chinese glyphs, so that the dock screen's
# Chinese text is measured (does it fit its tile?) and shown as a kiosk would show it. sip-tester: sipp,
# an independent SIP peer that registers with digest to the GB/T 28181 SIP transport (tests/gb28181/).
# postgresql (Debian 12: postgresql-15): the central's PostgreSQL index (edge/central/postgres); its tests
# start a throwaway server as the unprivileged user postgres in a temporary folder (tests/central/pg.py).
# xorriso: `edge room export` writes a room session's disc image (ISO 9660) with it, and the tests read
# the image back with it.
# ceph-mon ceph-osd radosgw ceph-common: the S3 object store's tests run a throwaway single-node Ceph
# cluster (memstore OSD, radosgw) in a temporary folder (tests/central/ceph.py).
APT_PACKAGES := ffmpeg fuse3 curl python3-venv python3-dev systemd dbus-daemon libseccomp2 chromium \
	fonts-wqy-microhei mosquitto sip-tester postgresql xorriso ceph-mon ceph-osd radosgw ceph-common

# Exact versions of every Python distribution the tests ran with (pip and the build backend included),
# so that an install a year from now gets what was tested. `make constraints` rewrites it from .venv.
CONSTRAINTS := constraints.txt

.PHONY: setup system demo test lint bench clean constraints

setup: system $(STAMP)

system:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	command -v systemd-analyze >/dev/null && command -v busctl >/dev/null || missing="$$missing systemd"; \
	command -v dbus-daemon >/dev/null || missing="$$missing dbus-daemon"; \
	ldconfig -p | grep -q 'libseccomp\.so\.2 ' || missing="$$missing libseccomp2"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing="$$missing fonts-wqy-microhei"; \
	[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	[ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || missing="$$missing postgresql"; \
	command -v xorriso >/dev/null || missing="$$missing xorriso"; \
	command -v ceph-mon >/dev/null || missing="$$missing ceph-mon"; \
	command -v ceph-osd >/dev/null || missing="$$missing ceph-osd"; \
	command -v radosgw >/dev/null || missing="$$missing radosgw"; \
	command -v ceph >/dev/null && command -v monmaptool >/dev/null || missing="$$missing ceph-common"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "setup: installing system packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "setup: missing system packages:$$missing"; \
	    echo "run as root: apt-get update && apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -c $(CONSTRAINTS) --upgrade pip setuptools
	$(VPY) -m pip install -q -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS) -e '.[test,sim]'
	@touch $(STAMP)

# After adding, removing or upgrading a dependency in pyproject.toml (and installing it into .venv):
# pin exactly what is installed. tests/test_quality.py fails while a needed distribution has no pin.
constraints:
	@[ -x $(VPY) ] || { echo "constraints: no $(VENV); run make setup first"; exit 1; }
	@{ echo "# Exact versions the tests ran with; make setup installs with them (pip -c, --build-constraint)."; \
	  echo "# Generated by make constraints from $(VENV) (pip freeze --all --exclude-editable); do not edit."; \
	  $(VPY) -m pip freeze --all --exclude-editable; } > $(CONSTRAINTS).tmp
	@mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	@echo "constraints: wrote $$(grep -vc '^#' $(CONSTRAINTS)) pins to $(CONSTRAINTS)"

demo: setup
	$(VENV)/bin/edge demo

# -q ends with the counts; -rfEs lists failures, errors and skips (with their reasons) above them.
# -n: parallel worker processes (pytest-xdist); most tests wait on subprocesses, mounts, sockets and
# ffmpeg rather than compute, so two workers pay off even on two cores. --dist loadfile keeps each test
# file in one worker, so a module's fixtures (a demo store, a built package) are made once.
# `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2
test: setup
	$(VPY) -m pytest -q -rfEs -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(VENV)/bin/ruff check edge drivers simulators tests
	$(VENV)/bin/mypy

bench: setup
	$(VPY) tests/bench/offload.py --json

clean:
	rm -rf $(VENV) build *.egg-info

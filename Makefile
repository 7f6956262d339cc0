# The contract with a new user on a fresh Debian machine:
#   make demo   set everything up, then run the station demo on embedded defaults
#   make test   set everything up, then run every test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# System tools the project runs: ffmpeg/ffprobe (media), fusermount3 (simulated recorder
# volumes), mosquitto (MQTT uplink tests), python3-venv (the virtual environment); systemd-analyze and
# busctl (systemd: the unit's seccomp groups, systemd-timedated over D-Bus), dbus-daemon (a private bus
# for the timedated stand-in) and libseccomp2 (the unit's filter installed in tests).
APT_PACKAGES := ffmpeg fuse3 mosquitto python3-venv python3-dev systemd dbus-daemon libseccomp2

.PHONY: setup system demo test lint bench clean

setup: system $(STAMP)

system:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v mosquitto >/dev/null && [ -x "$$(command -v mosquitto)" ] || \
	  [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	command -v systemd-analyze >/dev/null && command -v busctl >/dev/null || missing="$$missing systemd"; \
	command -v dbus-daemon >/dev/null || missing="$$missing dbus-daemon"; \
	ldconfig -p | grep -q 'libseccomp\.so\.2 ' || missing="$$missing libseccomp2"; \
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

$(STAMP): pyproject.toml
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,sim]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/edge demo

test: setup
	$(VPY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check edge drivers simulators tests
	$(VENV)/bin/mypy

bench: setup
	$(VPY) tests/bench/offload.py --json

clean:
	rm -rf $(VENV) build *.egg-info

# The two commands a newcomer needs (see README.md):
#   make demo   start the service on config/local.config (this machine, the `local` scheduler)
#   make test   provision the test lab (root, Debian) and run the whole test suite
#
# Everything runs from a virtualenv built on Debian's python3 in a world-readable place, so that the
# test users (alice, bob) can run the installed `metasched` CLI too.
VENV ?= /opt/metasched/venv
PY := $(VENV)/bin/python

.PHONY: demo test install venv unit

venv: $(PY)
$(PY):
	@command -v /usr/bin/python3 >/dev/null || { echo "need Debian's python3 and python3-venv: apt-get install python3-venv"; exit 1; }
	/usr/bin/python3 -m venv $(VENV) || { echo "need python3-venv: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	rm -rf build metasched.egg-info   # a stale build/ would ship files that no longer exist
	$(PY) -m pip install -q --no-warn-script-location --force-reinstall --no-deps .
	$(PY) -m pip install -q --no-warn-script-location '.[test]'
	rm -rf build metasched.egg-info

demo:
	@# jobs run as the users who submit them: the service (root here) switches to them with sudo
	@command -v sudo >/dev/null || { echo "installing sudo"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null; }
	@$(MAKE) -s install
	mkdir -p var
	$(VENV)/bin/metasched-api config/local.config

test:
	bash tests/lab/setup-machine.sh
	@$(MAKE) -s install
	cd tests/.. && $(PY) -m pytest -q -p no:cacheprovider --durations=30 $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/web

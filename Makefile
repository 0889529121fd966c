# `make run`: create .venv, install, start the demo clinic PBX (Ctrl-C stops it).
# `make test`: install what the tests need (Debian packages included), then run everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := var
DEMO_USERS := 1001 1002 1003 1004 1005

.PHONY: run test lint install test-deps demo clean

$(BIN)/pbx: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/pbx

install: $(BIN)/pbx

$(DEMO)/pbx.toml: | $(BIN)/pbx
	mkdir -p $(DEMO)
	cp -r examples/clinic/clinic_flows.py examples/clinic/prompts $(DEMO)/
	cp examples/clinic/pbx.toml $(DEMO)/pbx.toml
	@echo "Demo extensions (the passwords are shown once; 'pbx user passwd' changes them):"
	@for ext in $(DEMO_USERS); do $(BIN)/pbx -c $(DEMO)/pbx.toml user add $$ext --name "Demo $$ext"; done
	@echo "Voicemail PINs (dial *97): each extension's PIN is 4 digits: 1001 -> 1001, ..."
	@for ext in $(DEMO_USERS); do $(BIN)/pbx -c $(DEMO)/pbx.toml voicemail pin $$ext $$ext >/dev/null; done
	@$(BIN)/pbx -c $(DEMO)/pbx.toml voicemail pin refills 7337 >/dev/null
	@$(BIN)/pbx -c $(DEMO)/pbx.toml voicemail pin clinic 2546 >/dev/null
	@# Two call-center queues, each with an agent who is logged in when the server starts.
	@$(BIN)/pbx -c $(DEMO)/pbx.toml queue add appointments --number 500 --announce-every 30 --wrap-up 5
	@$(BIN)/pbx -c $(DEMO)/pbx.toml queue add nurse --number 501 --skills nursing:1 --announce-every 30
	@$(BIN)/pbx -c $(DEMO)/pbx.toml agent add desk --extension 1003 --name "Front desk"
	@$(BIN)/pbx -c $(DEMO)/pbx.toml agent add nurse --extension 1004 --name "Nurse" --skills nursing:5
	@$(BIN)/pbx -c $(DEMO)/pbx.toml agent login desk --queue appointments
	@$(BIN)/pbx -c $(DEMO)/pbx.toml agent login nurse --queue nurse --queue appointments

demo: $(DEMO)/pbx.toml

run: $(BIN)/pbx $(DEMO)/pbx.toml
	$(BIN)/pbx -c $(DEMO)/pbx.toml serve

# Debian packages the tests drive: SIPp (sip-tester), baresip, iproute2 (namespaces),
# espeak-ng (synthetic speech for the DTMF detector's talk-off test).
test-deps: $(BIN)/pbx
	@if ! command -v sipp >/dev/null || ! command -v baresip >/dev/null || ! command -v ip >/dev/null \
			|| ! command -v espeak-ng >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
			sip-tester baresip iproute2 espeak-ng; \
	fi

lint: $(BIN)/pbx
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: test-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info

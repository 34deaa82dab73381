# Two commands do everything: `make suite` (the built-in scenario suite) and `make test`.
# Both install what is missing first: Debian packages (as root, or through sudo), a virtualenv, the package.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# chromium: the tests open the HTML report in a real headless browser.
DEBIAN_PACKAGES := libsodium-dev pkg-config gdb gcc make chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: suite test deps system-deps

suite: deps
	$(VENV)/bin/remanence run --out reports --format json,html,junit,sarif,md

# Two xdist workers (one per core); each shared run (a language's suite, the wheel) stays on one worker.
test: deps
	$(VENV)/bin/pytest -q -n auto --dist loadgroup --no-loadscope-reorder

deps: system-deps $(INSTALLED)

system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

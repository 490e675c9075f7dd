# defectssft: `make test` and `make demo` do all the set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Shared libraries PySide6 needs even offscreen (Debian/Ubuntu package names).
QT_APT_PKGS := libgl1 libegl1 libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3

.PHONY: setup lock test test-fast lint demo demo-okng format bench-quick clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml deploy/pyproject.toml constraints.txt
	@bash scripts/install_system_deps.sh $(QT_APT_PKGS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[gui,dev]"
	touch $(STAMP)

# Upgrade .venv to the newest versions pyproject.toml allows and pin them in constraints.txt.
lock: $(STAMP)
	$(BIN)/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[gui,dev]"
	{ grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep '==' | \
	  sed "s/$$/ ; python_version == \"$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')\"/"; \
	} > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check defectssft deploy gui tests benchmarks scripts
	$(BIN)/ruff format --check defectssft deploy gui tests benchmarks scripts

test: $(STAMP) lint
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider

# Everything but the tests marked slow (training end to end, the demo, DDP, the train dialog).
test-fast: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

demo: $(STAMP)
	$(BIN)/defectssft demo --workdir demo-project --force

demo-okng: $(STAMP)
	$(BIN)/defectssft demo --data kolektor --workdir demo-okng --force

format: $(STAMP)
	$(BIN)/ruff format defectssft deploy gui tests benchmarks scripts

clean-demo:
	rm -rf demo-project demo-okng

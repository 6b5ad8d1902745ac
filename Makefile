# One-line set-up: `make demo` runs the built-in default, `make test` runs the test suite.
# Both create (or reuse) the virtual environment and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgead-installed

.PHONY: demo test lint clean fuzz fuzz-tools

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgead demo

# The inspection page's browser test needs Debian's chromium; root on a Debian machine (CI) installs it here.
test: $(STAMP) fuzz
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: tests/test_serve_page.py will skip"
	@# edgead line's tests: Debian's mosquitto broker and Aravis's fake GigE Vision camera (aravis-tools ships it),
	@# and PyGObject for the camera extra, which builds against the girepository and cairo headers
	@{ command -v mosquitto >/dev/null && command -v arv-fake-gv-camera-0.8 >/dev/null && \
	   ls /usr/lib/*/girepository-1.0/Aravis-0.8.typelib >/dev/null 2>&1 && \
	   { $(PY) -c "import gi" 2>/dev/null || pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; }; } || \
		[ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
		-y -qq --no-install-recommends mosquitto aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev \
		pkg-config >/dev/null; } || echo "mosquitto/aravis could not be installed: their tests/test_line_*.py will skip"
	@$(PY) -c "import gi" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		-e ".[camera]" || echo "PyGObject could not be built: tests/test_line_camera.py will skip"
	$(PY) -m pytest -q

# libFuzzer + ASan/UBSan on libedgead's manifest reader and edgead_predict checks (tests/c/fuzz), bounded:
# FUZZ_SECONDS per target (two targets). Installs clang from Debian when it is missing and we may (root).
FUZZ_SECONDS ?= 20
fuzz: fuzz-tools
	tests/c/fuzz/run.sh $(FUZZ_SECONDS) build/fuzz

fuzz-tools:
	@command -v clang >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-dev llvm \
	  >/dev/null; } || { echo "fuzz: clang with libFuzzer is needed (apt-get install clang libclang-rt-dev)"; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache build

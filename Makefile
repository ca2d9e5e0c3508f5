# The two set-up commands: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Bytecode of everything the targets run (pytest's own rewrite of conftest.py
# included, which happens before conftest can say where) goes to .cache/.
export PYTHONPYCACHEPREFIX := $(CURDIR)/.cache/pycache
# ... written there even where the environment says not to write it: with a prefix,
# the standard library's own bytecode is looked for there too, and each process that
# finds none compiles what it imports (importing the gateway took 1.2 s more).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install postgres run test coverage attacks bench fuzz soak lint wheel clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# --no-compile: bytecode is written as modules are first imported (above), so only
	@# for what runs, not for every file of every package (18 s of 63 s here).
	$(BIN)/python -m pip install --no-compile --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Build the example functions and serve them on the embedded store in ./.edgefn-data.
# A local secrets key (git-ignored), outside the data directory: a copy of
# .edgefn-data/ alone then holds no secret readable without it.
run: install
	@test -f .edgefn-secrets.key || (umask 077 && $(BIN)/edgefn secrets keygen > .edgefn-secrets.key)
	$(BIN)/edgefn serve --secrets-key-file .edgefn-secrets.key --deploy functions/hello --deploy functions/image_resize --deploy functions/watermark

# The tests start a throwaway PostgreSQL server of their own (tests/pg_cluster.py);
# this installs Debian's package when its initdb is missing.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "Installing PostgreSQL (apt-get install postgresql) for the multi-gateway tests ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# Leaves the checkout as it found it: what a run writes goes to git-ignored places
# (.cache/, .venv/, .edgefn/), the attacks it saw included (.cache/attacks.json).
test: install postgres
	@# The functions the tests deploy, built two at a time first: a build is one core's
	@# work for 10-20 s and the suite runs on one, so the tests find them built (~45 s less);
	@# beside them, the dev runner the `edgefn dev` tests serve from (~30 s once).
	ls -d functions/*/ tests/functions/*/ | xargs -P 2 -n 1 $(BIN)/edgefn build >/dev/null & \
	prepared=0; EDGEFN_CACHE_DIR=$(CURDIR)/.cache/edgefn $(BIN)/edgefn dev --prepare \
	  functions/hello >/dev/null || prepared=$$?; wait $$! && exit $$prepared
	@# Beside the suite, at the lowest priority: the AOT compiles of those functions
	@# (tests/precompile.py), on the cores the suite leaves idle; stopped with it.
	nice -n 19 $(BIN)/python tests/precompile.py & \
	status=0; $(BIN)/python -m pytest || status=$$?; \
	kill $$! 2>/dev/null; wait $$!; exit $$status

# `make test` measured: line coverage per package, the code that runs in the gateways,
# workers and CLIs the tests start included (pyproject's [tool.coverage]: each Python
# process writes its own data file, combined here). Data, the per-file report
# (report.txt, fewest lines covered first) and an HTML one (html/) go to .cache/coverage/.
# The whole suite measured took 13 min 22 s here, about as long as `make test`.
# Uncovered on purpose: sdk/edgefn/_guest.py runs only inside WebAssembly and
# _entry_check.py under `python -I -S` (no site, so no coverage). PYTEST_ARGS picks tests, e.g.
# `make coverage PYTEST_ARGS=tests/test_cli.py`.
COVERAGE_DIR = $(CURDIR)/.cache/coverage
COVERAGE_PACKAGES = sdk/edgefn contract/edgefn_contract runtime/edgefn_runtime platform/edgefn_platform

coverage: install postgres
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	status=0; COVERAGE_FILE=$(COVERAGE_DIR)/data $(BIN)/python -m pytest --cov --cov-report= \
	  $(PYTEST_ARGS) || status=$$?; \
	export COVERAGE_FILE=$(COVERAGE_DIR)/data; \
	$(BIN)/coverage combine -q >/dev/null 2>&1; \
	$(BIN)/coverage report --show-missing --sort=cover > $(COVERAGE_DIR)/report.txt; \
	$(BIN)/coverage html -q -d $(COVERAGE_DIR)/html; \
	echo "line coverage (per file: .cache/coverage/report.txt, html/index.html):"; \
	for package in $(COVERAGE_PACKAGES); do \
	  printf '  %-28s %6s%%\n' "$$package" \
	    "$$($(BIN)/coverage report --include='$(CURDIR)/'$$package'/*' --format=total)"; \
	done; \
	printf '  %-28s %6s%%\n' "all" "$$($(BIN)/coverage report --format=total)"; \
	exit $$status

# docs/ATTACKS.md, the attack table, from a green run of the tests that record
# attacks (tests/attacks.py); `make test` never writes it.
ATTACK_TESTS = $(shell grep -l 'attacks\.record' tests/test_*.py)

attacks: install postgres
	rm -f .cache/attacks.json
	$(BIN)/python -m pytest $(ATTACK_TESTS)
	$(BIN)/python tests/attacks.py

# Benchmarks print edgefn beside a native baseline measured in the same run; their
# compiled components are cached in the checkout (as the tests' are), not ~/.cache.
bench: export EDGEFN_CACHE_DIR = $(CURDIR)/.cache/edgefn
bench: install
	$(BIN)/python bench/runtime.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/streamed_uploads.py
	$(BIN)/python bench/fresh_rate.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/origin.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/kv.py
	$(BIN)/python bench/inflight.py
	$(BIN)/python bench/burst_memory.py
	$(BIN)/python bench/scaleout.py
	$(BIN)/python bench/devloop.py

lint: install
	$(BIN)/ruff check contract sdk runtime platform tests bench
	$(BIN)/mypy

# dist/edgefn-<version>-py3-none-any.whl: the CLI, gateway and SDK for any virtualenv
# (see "Installing outside the repository" in the README).
wheel: install
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

# Everything the make targets and the tests write into the checkout: the venv, the
# caches, `make run`'s data directory (its deployed functions and admin token) and secrets key,
# every function's build folder, the wheel and its build files. Not ~/.cache/edgefn,
# which `edgefn invoke` and `edgefn dev` share with every checkout and install.
clean:
	rm -rf $(VENV) .cache .edgefn-data .edgefn-secrets.key .hypothesis .pytest_cache .mypy_cache .ruff_cache \
	  build dist *.egg-info
	find . -path ./.git -prune -o -type d \( -name .edgefn -o -name __pycache__ \) -prune \
	  -exec rm -rf {} +

# The fuzz tests of `make test` with many more examples (not part of `make test`).
fuzz: install
	EDGEFN_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -p no:cacheprovider tests/test_fuzz.py tests/test_admin_fuzz.py

# Five minutes of mixed healthy and hostile traffic; checks statuses and memory.
soak: install
	$(BIN)/python bench/soak.py --seconds 300

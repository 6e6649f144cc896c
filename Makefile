# The README's two set-up commands: `make train` installs and trains, `make test` installs and runs the tests.
# Both create .venv; afterwards `. .venv/bin/activate` puts `ddpm` on the PATH.
VENV := .venv
DATA := ../shared/data/cifar10-jpeg.tar.gz

.PHONY: train test

# Install, unpack the JPEG copy of CIFAR-10 when ../shared has it (else `ddpm train` downloads CIFAR-10 to ./data),
# and train the cpu preset for 30 minutes.
train:
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e .
	if [ -f $(DATA) ] && [ ! -d cifar10-jpeg/train ]; then mkdir -p cifar10-jpeg && tar xzf $(DATA) -C cifar10-jpeg; fi
	$(VENV)/bin/ddpm train --preset cpu --max-time 30m --save-model runs/cpu \
	    $$([ -d cifar10-jpeg/train ] && echo --data-dir cifar10-jpeg/train)

# Install with the test extra and run the default test set (the slow set: `.venv/bin/python -m pytest -q -m slow`).
test:
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e ".[test]"
	$(VENV)/bin/python -m pytest -q

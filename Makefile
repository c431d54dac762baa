# corr3d — every target creates .venv and installs what is missing on first use.
#
# Every variable below is input (command line or environment) and none of it may become shell code:
# - `override V := $(value V)` keeps each value as typed: make never expands it again, so a value that
#   holds `$(shell ...)` stays text;
# - single-word variables (EXP, TASKS, CKPT, ...) may only hold [A-Za-z0-9._/,=:+-] (VENV and PYTHON:
#   [A-Za-z0-9._/+-]); a make error names the variable before any recipe runs; recipes pass them in '...';
# - ARGS and PYTEST_ARGS hold several (quoted) words: make exports them and corr3d/launch/make_args.py splits
#   them with shlex.split and exec's the command, so ; | $() ` < > are plain characters, never shell syntax;
# - the command is exec'd, so its exit status is the recipe's: make fails when corr3d fails.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
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
NAME ?=
PYTEST_ARGS ?=

PATH_VARS := VENV PYTHON
TOKEN_VARS := EXP TASKS CKPT BACKBONE LAUNCHER NODES GPUS PARTITION TIME ACCOUNT NAME
WORDS_VARS := ARGS PYTEST_ARGS
$(foreach v,$(PATH_VARS) $(TOKEN_VARS) $(WORDS_VARS),\
  $(eval FROM_$(v) := $(origin $(v)))$(eval override $(v) := $$(value $(v))))
export ARGS PYTEST_ARGS

comma := ,
PATH_CHARS := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
  0 1 2 3 4 5 6 7 8 9 . _ / + -
TOKEN_CHARS := $(PATH_CHARS) $(comma) = :
# $(call _drop,text,chars): text without any of the chars (what is left is not allowed)
_drop = $(if $(2),$(call _drop,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
# $(call check_var,VAR,chars,what): a make error unless $(VAR) is one word of the given characters (or empty)
check_var = $(if $(or $(filter-out 1,$(words x$($(1))x)),$(call _drop,$($(1)),$(2))),$(error $(1)='$($(1))' \
  (from $(FROM_$(1))) may only hold $(3), no spaces or shell characters))
TOKEN_WHAT := letters$(comma) digits and . _ / $(comma) = : + -
$(foreach v,$(PATH_VARS),$(call check_var,$(v),$(PATH_CHARS),letters$(comma) digits and . _ / + -))
# the run targets' variables (checked only for them: a stray TIME=... in the environment must not break `make test`)
RUN_GOALS := train eval sweep render bench
$(if $(filter $(RUN_GOALS),$(MAKECMDGOALS)),\
  $(foreach v,$(TOKEN_VARS),$(call check_var,$(v),$(TOKEN_CHARS),$(TOKEN_WHAT))))

PY := $(VENV)/bin/python
STAMP := $(VENV)/.corr3d-installed
# <command> [args]: runs it with the words of $ARGS appended (shlex, no shell); the exit status is the command's
WITH_ARGS := '$(PY)' -m corr3d.launch.make_args ARGS
WITH_PYTEST_ARGS := '$(PY)' -m corr3d.launch.make_args PYTEST_ARGS

# Debian packages: open3d's library links libusb, libGL and libEGL (corr3d uses only its ray caster, never the Vulkan
# offscreen renderer, so no Vulkan packages: a render process maps no libvulkan); the SLURM tests need a cluster.
# sweethome3d-furniture: ~820 real textured 3D models (OBJ+MTL in /usr/share/sweethome3d/furniture/*.sh3f, CC0 and
# CC-BY 3.0) that training and evaluation use as real, non-procedural objects offline (corr3d/assets/sh3d.py).
APT_RUNTIME := libusb-1.0-0 libgl1 libegl1 libgomp1 sweethome3d-furniture
APT_TEST := slurmctld slurmd slurm-client munge

.PHONY: help setup setup-test train eval bench bench-gpu test test-fast render sweep clean-venv

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
	@test -x '$(PY)' || '$(PYTHON)' -m venv '$(VENV)'
	'$(PY)' -m pip install -q --upgrade pip
	@# On Linux x86-64 pyproject installs open3d-cpu: the same `open3d` files as the full open3d an older checkout's
	@# venv may hold. Installed over it, both own one folder and removing either breaks the other: remove both first
	@# when the full one is there, so the install below puts open3d-cpu back alone.
	@if '$(PY)' -c 'import platform, sys; sys.exit(not (sys.platform == "linux" and platform.machine() == "x86_64"))' \
	  && '$(PY)' -m pip show -q open3d >/dev/null 2>&1; then \
	  echo "[corr3d] replacing open3d with open3d-cpu (the same module without the CUDA build, ~600 MB smaller)"; \
	  '$(PY)' -m pip uninstall -q -y open3d open3d-cpu; \
	fi
	'$(PY)' -m pip install -q -e '.[all,test]'
	@touch '$(STAMP)'

setup: $(STAMP)

setup-test: $(STAMP)
	$(call apt_ensure,$(APT_TEST))

LAUNCH_ARGS = $(if $(LAUNCHER),launcher.name='$(LAUNCHER)') \
  $(if $(NODES),launcher.nodes='$(NODES)' trainer.num_nodes='$(NODES)') \
  $(if $(GPUS),launcher.gpus_per_node='$(GPUS)' trainer.devices='$(GPUS)') \
  $(if $(PARTITION),launcher.partition='$(PARTITION)') $(if $(TIME),launcher.time_min='$(TIME)') \
  $(if $(ACCOUNT),launcher.account='$(ACCOUNT)')

# options before the experiment: the words of ARGS come last (after the overrides)
train: $(STAMP)
	$(WITH_ARGS) '$(VENV)/bin/corr3d' train '$(EXP)' $(LAUNCH_ARGS)

eval: $(STAMP)
	$(WITH_ARGS) '$(VENV)/bin/corr3d' eval $(if $(TASKS),--tasks '$(TASKS)') $(if $(CKPT),--ckpt '$(CKPT)') \
	  $(if $(BACKBONE),--backbone '$(BACKBONE)') '$(EXP)' $(LAUNCH_ARGS)

# make sweep EXP=ablation_fig12_iterations [ARGS='seed=0,1,2 optim.lr=1e-5'] [NAME=..]: key=v1,v2 is an axis
sweep: $(STAMP)
	$(WITH_ARGS) '$(VENV)/bin/corr3d' sweep $(if $(NAME),--name '$(NAME)') '$(EXP)' $(LAUNCH_ARGS)

render: $(STAMP)
	$(WITH_ARGS) '$(VENV)/bin/corr3d' render '$(EXP)' $(LAUNCH_ARGS)

bench: $(STAMP)
	$(WITH_ARGS) '$(VENV)/bin/corr3d' bench

# on a CUDA machine: the paper recipe's step, equivariance throughput and the offline eval, one table (<= 8 min)
bench-gpu: $(STAMP)
	'$(VENV)/bin/corr3d' bench --gpu

test: setup-test
	$(WITH_PYTEST_ARGS) '$(PY)' -m pytest

# the edit loop: everything but the tests marked slow (end-to-end runs) or slurm (needs the local cluster)
test-fast: $(STAMP)
	$(WITH_PYTEST_ARGS) '$(PY)' -m pytest -m "not slow and not slurm"

clean-venv:
	$(if $(filter / . .. ~,$(VENV))$(if $(VENV),,empty),$(error VENV='$(VENV)': refusing to remove it))
	rm -rf '$(VENV)'

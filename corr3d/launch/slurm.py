"""Submit training, evaluation and rendering to a SLURM cluster with submitit.

``corr3d train EXP launcher.name=slurm launcher.nodes=2 launcher.gpus_per_node=8`` (= ``make train EXP=..
LAUNCHER=slurm NODES=2 GPUS=8``) creates the run directory here, submits one job with one task per GPU (Lightning's
``SLURMEnvironment`` reads ranks from ``srun``), writes the job's logs to ``<run>/slurm/<job id>/`` and records the job
in ``<run>/slurm/jobs.json``. The job requeues itself on the pre-timeout signal and resumes from the run's last
checkpoint; an admin's ``scontrol requeue`` restarts it the same way.

The batch script is shell: every ``#SBATCH`` value and path submitit writes is ``shlex.quote``-d, and quoting cannot
help inside a ``#SBATCH`` comment line, where a newline would end the line and turn the rest into a command (and
stop sbatch reading the later directives). So :func:`validate_launcher` refuses, before anything is written, any
launcher string with a control character or outside its field's SLURM syntax, ``extra`` keys that are not option
names, and the job name and every path of the script are checked the same way (:func:`job_name`,
:func:`script_path`). It runs at the top of every ``submit_*`` (and of ``corr3d.launch.sweep.submit_sweep``).
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from corr3d.assets.experiment import experiment_objects
from corr3d.config import ConfigError
from corr3d.errors import RunLockedError
from corr3d.launch.tasks import (
    EvalPartTask,
    GatherTask,
    OfflineSuiteTask,
    RenderChunkTask,
    TrainTask,
    cfg_to_yaml,
    entry_name,
    part_file_name,
)
from corr3d.utils.optional import import_extra
from corr3d.utils.io import write_json
from corr3d.utils.run_dir import create_run_dir

log = logging.getLogger("corr3d.launch")
JOBS_FILE = "jobs.json"


# ---- validation: nothing from the config may become a line of the batch script ------------------------------------
_WORD = r"[A-Za-z0-9_.-]+"
_GRES_ITEM = r"[A-Za-z][A-Za-z0-9_.-]*(?::[A-Za-z0-9_.-]+)?(?::[0-9]+)?"
# launcher key -> (pattern of its whole value, what it looks like); sbatch's syntax of each option
FIELD_PATTERNS: dict[str, tuple[re.Pattern, str]] = {
    "partition": (re.compile(rf"^{_WORD}(?:,{_WORD})*$"), "partition names [A-Za-z0-9_.-], comma-separated"),
    "account": (re.compile(rf"^{_WORD}$"), "an account name [A-Za-z0-9_.-]"),
    "qos": (re.compile(rf"^{_WORD}$"), "a QOS name [A-Za-z0-9_.-]"),
    "constraint": (re.compile(r"^[A-Za-z0-9_.&|,\[\]*:()!-]+$"),
                   "SLURM constraint syntax: features [A-Za-z0-9_.-] joined by & | , with [ ] ( ) * : !"),
    "gres": (re.compile(rf"^{_GRES_ITEM}(?:,{_GRES_ITEM})*$"), "name[:type][:count], comma-separated (gpu:a100:8)"),
}
MAX_TEXT = 1024  # job names, comments, setup lines, extra values
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _config_error(key: str, value: Any, problem: str, hint: str) -> ConfigError:
    return ConfigError(f"'{key}' = {str(value)!r} {problem}; {hint} (it is written into the SLURM batch script)")


def check_text(value: Any, key: str, *, allow_tab: bool = False) -> str:
    """``value`` as a str if it is one printable line (no newline or other control character, bounded length),
    else a :class:`ConfigError` naming ``key``."""
    text = str(value)
    bad = _CONTROL.search(text.replace("\t", "") if allow_tab else text)
    if bad:
        raise _config_error(key, value, f"contains the control character {bad.group()!r}",
                            "use one printable line (a newline would end the #SBATCH line and run the rest)")
    if len(text) > MAX_TEXT:
        raise _config_error(key, text[:40] + "...", f"is longer than {MAX_TEXT} characters", "shorten it")
    return text


def check_field(value: Any, key: str, field: str) -> str:
    """A launcher value of an sbatch option with a syntax of its own (:data:`FIELD_PATTERNS`)."""
    text = check_text(value, key)
    pattern, hint = FIELD_PATTERNS[field]
    if not pattern.match(text):
        raise _config_error(key, value, "is not a valid SLURM value", f"expected {hint}")
    return text


def _check_scalar(value: Any, key: str) -> None:
    if isinstance(value, (bool, int, float)) or value is None:
        return
    if not isinstance(value, str):
        raise _config_error(key, value, f"is a {type(value).__name__}", "give a string, number or true/false")
    check_text(value, key)


def validate_launcher(launcher: Any) -> Any:
    """Refuse launcher settings that could change the batch script's shape (raises :class:`ConfigError` naming the
    key); returns ``launcher``. See the module doc: partition/account/qos/constraint/gres follow their SLURM
    syntax, job_name and ``extra`` values are single printable lines (submitit quotes them), ``extra`` keys are
    option names, ``setup`` lines (shell, by design) are one line each."""
    def get(key):
        return launcher.get(key) if hasattr(launcher, "get") else getattr(launcher, key, None)

    for field in FIELD_PATTERNS:
        value = get(field)
        if value not in (None, ""):
            check_field(value, f"launcher.{field}", field)
    if get("job_name") not in (None, ""):
        check_text(get("job_name"), "launcher.job_name")
    setup = get("setup") or []
    if isinstance(setup, str):
        setup = [setup]
    for i, line in enumerate(setup):
        check_text(line, f"launcher.setup[{i}]", allow_tab=True)
    extra = get("extra") or {}
    for key in extra:
        value = extra[key]
        name = f"launcher.extra.{key}"
        if not _OPTION.match(str(key)) or len(str(key)) > 64:
            raise _config_error(name, key, "is not an sbatch option name",
                                "use the long option without dashes, e.g. extra: {mail-type: END}")
        field = str(key).replace("-", "_").lower()
        if field in FIELD_PATTERNS and value not in (None, "", True):
            check_field(value, name, field)
        else:
            _check_scalar(value, name)
    return launcher


def script_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it can be written into the batch script (quoted) as one line: no control characters."""
    text = str(path)
    bad = _CONTROL.search(text)
    if bad:
        raise ConfigError(f"{what} {text!r} contains the control character {bad.group()!r}; it is written into the "
                          f"SLURM batch script: choose a path without newlines or control characters (output_dir)")
    return Path(path)


# ---- config -> sbatch parameters -------------------------------------------------------------------------------------
def align_trainer_with_launcher(cfg: DictConfig) -> DictConfig:
    """Lightning under SLURM needs ``Trainer(devices)`` == tasks per node and ``num_nodes`` == nodes, or it hangs at
    "Initializing distributed". Whichever side of a pair is left at 1 follows the other; a real conflict is an error.
    """
    cfg = copy.deepcopy(cfg)
    for trainer_key, launcher_key in (("devices", "gpus_per_node"), ("num_nodes", "nodes")):
        t, l = cfg.trainer[trainer_key], cfg.launcher[launcher_key]
        if not isinstance(t, int):
            raise ConfigError(f"trainer.{trainer_key}={t!r}: with launcher.name=slurm give a number (tasks per node)")
        if t == l:
            continue
        if t == 1:
            cfg.trainer[trainer_key] = l
        elif l == 1:
            cfg.launcher[launcher_key] = t
        else:
            raise ConfigError(f"trainer.{trainer_key}={t} but launcher.{launcher_key}={l}: set one of them "
                              f"(make's GPUS=/NODES= set both)")
    return cfg


def _gres_for(gres: str, gpus: int) -> str:
    """``gpu:a100:8`` -> ``gpu:a100:<gpus>`` (evaluation tasks take fewer GPUs than training). In a list
    (``gpu:a100:8,nvme:1``) the ``gpu`` items get the count (the first item where none is called ``gpu``)."""
    items = gres.split(",")
    targets = [i for i, item in enumerate(items) if item.split(":")[0] == "gpu"] or [0]
    for i in targets:
        parts = items[i].split(":")
        if parts[-1].isdigit():
            parts = parts[:-1]
        items[i] = ":".join([*parts, str(gpus)])
    return ",".join(items)


def slurm_parameters(launcher: DictConfig, *, name: str, nodes: int, tasks_per_node: int, gpus_per_node: int,
                     dependency: str | None = None) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keyword arguments for one job (or every task of an array)."""
    validate_launcher(launcher)
    params: dict[str, Any] = {
        "name": check_text(name, "launcher.job_name"), "nodes": nodes, "tasks_per_node": tasks_per_node,
        "cpus_per_task": launcher.cpus_per_task, "timeout_min": launcher.time_min,
        "slurm_signal_delay_s": launcher.signal_delay_s, "slurm_array_parallelism": launcher.array_parallelism,
    }
    if launcher.mem_gb:
        params["mem_gb"] = launcher.mem_gb
    if gpus_per_node and launcher.gres:
        params["slurm_gres"] = _gres_for(str(launcher.gres), gpus_per_node)
    elif gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if launcher[key]:
            params[f"slurm_{key}"] = str(launcher[key])
    if launcher.setup:
        params["slurm_setup"] = [str(line) for line in launcher.setup]
    if dependency:
        params["slurm_dependency"] = dependency
    # relative paths in the config (output_dir, data_root) mean the directory the user submitted from
    params["slurm_additional_parameters"] = {"chdir": str(script_path(os.getcwd(), "the current directory")),
                                             **OmegaConf.to_container(launcher.extra)}
    return params


def gpus_per_task_node(cfg: DictConfig, gpus: int) -> int:
    """GPUs to request: none when the run is on CPU (the tests' cluster has no GPUs)."""
    return 0 if str(cfg.trainer.accelerator) == "cpu" else gpus


def make_executor(log_root: Path, params: dict[str, Any], max_requeues: int = 10):
    submitit = import_extra("submitit")  # deferred: the [cluster] extra, only SLURM submission needs it

    # <log_root>/<job id>/ holds the sbatch script, stdout/stderr of every task and the pickled call
    log_root = script_path(log_root, "the SLURM log directory")
    executor = submitit.AutoExecutor(folder=Path(log_root) / "%j", cluster="slurm",
                                     slurm_max_num_timeout=max_requeues)
    executor.update_parameters(**params)
    return executor


def job_name(cfg: DictConfig, command: str) -> str:
    """``launcher.job_name`` or ``corr3d-<command>-<experiment>``: one printable line (submitit quotes it)."""
    if cfg.launcher.job_name:
        return check_text(cfg.launcher.job_name, "launcher.job_name")
    return check_text(f"corr3d-{command}-{cfg.experiment}", "experiment")


# ---- bookkeeping ---------------------------------------------------------------------------------------------------
def record_jobs(log_root: Path, kind: str, job_ids: Sequence[str], **info: Any) -> Path:
    """Append a submission to ``<log_root>/jobs.json`` (job ids, when, from where)."""
    path = Path(log_root) / JOBS_FILE
    records = json.loads(path.read_text()) if path.exists() else []
    records.append({"kind": kind, "job_ids": list(job_ids), "submitted": _dt.datetime.now().isoformat(timespec="seconds"),
                    "cwd": os.getcwd(), **info})
    write_json(path, records)
    return path


def recorded_job_ids(log_root: Path) -> list[str]:
    path = Path(log_root) / JOBS_FILE
    records = json.loads(path.read_text()) if path.exists() else []
    return [job_id for record in records for job_id in record["job_ids"]]


def queued_jobs(job_ids: Iterable[str]) -> dict[str, str]:
    """Job id -> state for the given jobs still known to ``squeue`` (pending, running, completing, requeued)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True,
                         timeout=60)
    states = dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if line.strip())
    array_ids = {j.split("_")[0] for j in ids}
    # an array task still pending is listed as <array>_<task>; keep the ones we asked for (or the whole array)
    return {j: s for j, s in states.items() if j in ids or j.split("_")[0] in array_ids}


def wait_for_jobs(job_ids: Iterable[str], poll_s: float = 10.0, timeout_s: float | None = None) -> None:
    """Block until none of the jobs is queued or running any more (works without SLURM accounting)."""
    ids = list(job_ids)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while queued_jobs(ids):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs {ids} still queued after {timeout_s}s")
        time.sleep(poll_s)


def _refuse_if_active(log_root: Path) -> None:
    """Re-running the same command reuses an unfinished run directory; two jobs must not train into it at once."""
    active = queued_jobs(recorded_job_ids(log_root))
    if active:
        listing = ", ".join(f"{j} ({s})" for j, s in active.items())
        raise RunLockedError(f"{log_root.parent} already has SLURM job(s) {listing}", path=log_root.parent,
                             fix="wait for them or scancel them")


def _announce(kind: str, job_ids: Sequence[str], log_root: Path, extra: str = "") -> None:
    ids = ", ".join(job_ids) if len(job_ids) <= 4 else f"{job_ids[0]} .. {job_ids[-1]} ({len(job_ids)} tasks)"
    print(f"[corr3d] submitted SLURM {kind} job {ids}\n"
          f"[corr3d]   logs: {log_root}/<job id>/  (squeue -j {job_ids[0].split('_')[0]}; "
          f"scancel {job_ids[0].split('_')[0]}){extra}", flush=True)


def sbatch_script(executor, command: str | None = None) -> str:
    """The batch script ``executor`` would submit (for ``--dry-run``-style inspection and the tests); ``command``
    defaults to the one submitit runs (``<python> -u -m submitit.core._submit <folder>``)."""
    inner = executor._executor
    return inner._make_submission_file_text(command or inner._submitit_command_str, "preview")


# ---- training ------------------------------------------------------------------------------------------------------
def train_executor(cfg: DictConfig, run: Path):
    """The executor for ``cfg``'s training job, logging into ``<run>/slurm/<job id>/`` (cfg already aligned)."""
    tasks = cfg.trainer.devices
    params = slurm_parameters(cfg.launcher, name=job_name(cfg, "train"), nodes=cfg.trainer.num_nodes,
                              tasks_per_node=tasks, gpus_per_node=gpus_per_task_node(cfg, tasks))
    return make_executor(Path(run) / "slurm", params, cfg.launcher.max_requeues)


def submit_train(cfg: DictConfig):
    """Submit ``cfg``'s training as one SLURM job (nodes x gpus_per_node tasks); returns the submitit job.

    The run directory is created here (or reused: same experiment and resolved config, not finished), so the job, its
    requeues and a later re-submission of the same command all continue one directory.
    """
    validate_launcher(cfg.launcher)  # before the run directory is created
    cfg = align_trainer_with_launcher(cfg)
    script_path(Path(cfg.output_dir).resolve(), "output_dir")
    run = create_run_dir(cfg).resolve()
    log_root = run / "slurm"
    _refuse_if_active(log_root)
    from corr3d.training.run import train  # deferred: the training stack loads only when a job is submitted

    job = train_executor(cfg, run).submit(TrainTask(cfg_to_yaml(cfg), str(run), entry_name(train)))
    record_jobs(log_root, "train", [job.job_id], run_dir=str(run), nodes=cfg.trainer.num_nodes,
                tasks_per_node=cfg.trainer.devices)
    _announce("train", [job.job_id], log_root, f"\n[corr3d]   run directory: {run}")
    if cfg.launcher.wait:
        wait_for_jobs([job.job_id])
        print(f"[corr3d] train job {job.job_id} left the queue; results in {run}", flush=True)
    return job


# ---- evaluation ----------------------------------------------------------------------------------------------------
def eval_plan(cfg: DictConfig) -> tuple[DictConfig, list[tuple[str, str]], Path]:
    """(config with adapter and output directory pinned, [(task, model)], output directory).

    Pinning matters: the array runs later, and a training run finishing in between would otherwise change which
    adapter "finetuned" means (``runs/<exp>/latest``) halfway through the array.
    """
    from corr3d.eval import run as eval_run  # deferred: a SLURM job loads only the stack of its task

    cfg = copy.deepcopy(cfg)
    out = eval_run.output_dir(cfg).resolve()
    names = eval_run.model_names(cfg)
    tasks = eval_run.selected_tasks(cfg)
    adapter = eval_run.resolve_adapter(cfg) if "finetuned" in names else None
    if adapter is not None:
        cfg.eval.ckpt = str(Path(adapter).resolve())
    cfg.eval.out_dir = str(out)
    return cfg, [(task, name) for name in names for task in tasks], out


def eval_gpus(cfg: DictConfig) -> int:
    on_cpu = str(cfg.eval.device) == "cpu" or str(cfg.trainer.accelerator) == "cpu"
    return 0 if on_cpu else cfg.launcher.eval_gpus


def missing_offline_parts(cfg: DictConfig, tasks: Iterable[str]) -> list[str]:
    """Offline-suite parts the tasks need that are not generated yet (all of them with eval.offline.regenerate)."""
    if not cfg.eval.offline.enabled:
        return []
    # deferred: a SLURM job loads only the stack of its task
    from corr3d.eval.offline_suite import is_complete
    from corr3d.eval.tasks import offline_parts

    needed = offline_parts(tasks)
    force = bool(cfg.eval.offline.regenerate)
    return [part for part in needed if force or not is_complete(cfg.eval.offline.dir, part)]


def _submit_offline_suite(cfg: DictConfig, tasks: list[str], log_root: Path):
    """A job that generates the missing offline-suite parts (None when nothing is missing)."""
    if not missing_offline_parts(cfg, tasks):
        return None
    params = slurm_parameters(cfg.launcher, name=job_name(cfg, "eval-suite"), nodes=1, tasks_per_node=1,
                              gpus_per_node=0)
    root = str(Path(cfg.eval.offline.dir).resolve())
    return make_executor(log_root, params).submit(
        OfflineSuiteTask(root, missing_offline_parts(cfg, tasks), bool(cfg.eval.offline.regenerate)))


def submit_eval(cfg: DictConfig):
    """One array task per (benchmark, model), then a gather job (``afterany``) that writes metrics.json and
    report.md into the evaluation directory; returns (array jobs, gather job).

    Missing offline-suite parts are generated first by one job the array waits for. Dependencies are ``afterany``
    so a failed job never leaves the rest pending forever; missing parts show up in the gather job's log.
    """
    validate_launcher(cfg.launcher)  # before anything is written
    cfg, parts, out = eval_plan(cfg)
    from corr3d.eval import run as eval_run  # deferred: a SLURM job loads only the stack of its task

    if not parts:
        raise ValueError("nothing to evaluate: no tasks or models selected")
    parts_dir, log_root = out / "parts", script_path(out, "the evaluation directory") / "slurm"
    parts_dir.mkdir(parents=True, exist_ok=True)
    # nothing is deleted: the array overwrites the selected parts, and the gather reports only parts measured under
    # this configuration (corr3d.eval.run.current_parts), so an earlier evaluation's results stay and merge
    launcher = cfg.launcher
    suite_job = _submit_offline_suite(cfg, sorted({task for task, _ in parts}), log_root)
    cfg.eval.offline.regenerate = False  # generated once above; array tasks must not regenerate concurrently
    cfg_yaml = cfg_to_yaml(cfg)
    params = slurm_parameters(launcher, name=job_name(cfg, "eval"), nodes=1, tasks_per_node=1,
                              gpus_per_node=eval_gpus(cfg),
                              dependency=f"afterany:{suite_job.job_id}" if suite_job else None)
    array = make_executor(log_root, params, launcher.max_requeues).submit_array(
        [EvalPartTask(cfg_yaml, task, model, str(parts_dir), entry_name(eval_run.run_eval_part))
         for task, model in parts])
    array_id = array[0].job_id.split("_")[0]
    gather_params = slurm_parameters(launcher, name=job_name(cfg, "eval-gather"), nodes=1, tasks_per_node=1,
                                     gpus_per_node=0, dependency=f"afterany:{array_id}")
    expected = [part_file_name(task, model) for task, model in parts]
    gather = make_executor(log_root, gather_params).submit(
        GatherTask(cfg_yaml, str(parts_dir), str(out), expected, entry_name(eval_run.gather_eval)))
    job_ids = [job.job_id for job in array]
    record_jobs(log_root, "eval", job_ids, gather_job_id=gather.job_id,
                suite_job_id=suite_job.job_id if suite_job else None,
                parts=[f"{task}/{model}" for task, model in parts], out_dir=str(out))
    _announce("eval", job_ids, log_root,
              (f"\n[corr3d]   offline suite job {suite_job.job_id} runs first" if suite_job else "")
              + f"\n[corr3d]   {len(parts)} parts ({', '.join(f'{t}/{m}' for t, m in parts)}); gather job "
              f"{gather.job_id} writes {out / 'metrics.json'} and {out / 'report.md'}")
    if launcher.wait:
        wait_for_jobs([array_id, gather.job_id])
        state = "written" if (out / "metrics.json").exists() else "MISSING (see the gather job's log)"
        print(f"[corr3d] evaluation finished: {out / 'metrics.json'} {state}", flush=True)
    return array, gather


# ---- rendering -----------------------------------------------------------------------------------------------------
def chunked(items: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def experiment_object_specs(cfg: DictConfig) -> list[str]:
    """What the experiment trains, validates and evaluates on (``corr3d.assets.experiment``)."""
    return experiment_objects(cfg).all()


def submit_render(cfg: DictConfig, specs: Sequence[str] | None = None, root: str | os.PathLike | None = None,
                  chunk_size: int | None = None) -> list:
    """Render ``specs`` (default: the experiment's objects) as an array job, one task per chunk of objects.

    Logs and per-chunk records go to ``<root>/slurm/``; rendering is atomic per object and skips finished objects,
    so re-submitting after failures or requeues only renders what is missing.
    """
    validate_launcher(cfg.launcher)  # before anything is written
    specs = list(specs) if specs is not None else experiment_object_specs(cfg)
    root = script_path(Path(root or cfg.data.rendered_dir).resolve(), "the rendering directory")
    chunks = chunked(specs, chunk_size or cfg.launcher.render_chunk_size)
    if not chunks:
        raise ValueError("nothing to render: the object list is empty")
    log_root = root / "slurm"
    params = slurm_parameters(cfg.launcher, name=job_name(cfg, "render"), nodes=1, tasks_per_node=1, gpus_per_node=0)
    executor = make_executor(log_root, params, cfg.launcher.max_requeues)
    render_yaml = OmegaConf.to_yaml(cfg.data.render, resolve=True)
    jobs = executor.submit_array([RenderChunkTask(chunk, str(root), render_yaml, i) for i, chunk in enumerate(chunks)])
    job_ids = [job.job_id for job in jobs]
    record_jobs(log_root, "render", job_ids, objects=len(specs), chunk_size=len(chunks[0]))
    _announce("render", job_ids, log_root, f"\n[corr3d]   {len(specs)} objects in {len(chunks)} tasks -> {root}")
    if cfg.launcher.wait:
        wait_for_jobs(job_ids)
    return jobs

"""The ``corr3d`` command: ``corr3d train EXP [key=value ...]``, ``eval``, ``render``, ``sweep``, ``bench``.

Options and ``key=value`` overrides may come in any order. ``--dry-run`` / ``--print-config`` (train, eval, render,
sweep) validate the whole configuration, print it resolved (YAML) and exit 0 without creating a directory or
loading weights."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

from corr3d.config import ConfigError, available_experiments, load_config, to_yaml


def _show_config(args: argparse.Namespace, cfg, header: str = "") -> bool:
    """``--dry-run`` / ``--print-config``: print the validated, resolved config; True when the command stops here."""
    if not (args.dry_run or args.print_config):
        return False
    sys.stdout.write(header + to_yaml(cfg))
    sys.stdout.flush()
    return True


def _dry_run_done(args: argparse.Namespace, what: str) -> int:
    if args.dry_run:
        print(f"corr3d: dry run: {what} valid; nothing was written and no weights were loaded", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.experiment, args.overrides)
    if _show_config(args, cfg):
        return _dry_run_done(args, "configuration")
    if cfg.launcher.name == "slurm":
        from corr3d.launch.slurm import submit_train  # deferred: a command loads only its own stack

        submit_train(cfg)
        return 0
    from corr3d.training.run import train  # deferred: a command loads only its own stack

    train(cfg)
    return 0


def _eval(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"eval.tasks=[{args.tasks}]")
    if args.ckpt:
        overrides.append(f"eval.ckpt={args.ckpt}")
    if args.backbone:
        overrides.append(f"eval.backbone={args.backbone}")
    cfg = load_config(args.experiment, overrides)
    if cfg.eval.ckpt and not Path(str(cfg.eval.ckpt)).exists():
        raise ConfigError(f"eval.ckpt={cfg.eval.ckpt}: no such file or directory",
                          fix="give an adapter.safetensors or a training run directory (runs/<experiment>/<run>)")
    if _show_config(args, cfg):
        return _dry_run_done(args, "configuration")
    if cfg.launcher.name == "slurm":
        from corr3d.launch.slurm import submit_eval  # deferred: a command loads only its own stack

        submit_eval(cfg)
        return 0
    from corr3d.eval.run import run_eval  # deferred: a command loads only its own stack

    run_eval(cfg)
    return 0


def _render(args: argparse.Namespace) -> int:
    cfg = load_config(args.experiment, args.overrides)
    if _show_config(args, cfg):
        return _dry_run_done(args, "configuration")
    if cfg.launcher.name == "slurm":
        from corr3d.launch.slurm import submit_render  # deferred: a command loads only its own stack

        submit_render(cfg)
        return 0
    from corr3d.render.batch import render_experiment_objects  # deferred: a command loads only its own stack

    render_experiment_objects(cfg)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from corr3d.launch.sweep import run_sweep, split_values  # deferred: a command loads only its own stack

    # key=v1,v2 (a comma outside brackets) is an axis; key=[a,b] or key=v is a plain override
    axes = [a for a in args.overrides if "=" in a and len(split_values(a.partition("=")[2])) > 1]
    plain = [a for a in args.overrides if a not in axes]
    axes += [f"{a.partition('=')[0]}={a.partition('=')[2]}" for a in args.axis or []]
    if args.dry_run or args.print_config:
        from corr3d.launch.sweep import SweepPlan  # deferred: a command loads only its own stack

        plan = SweepPlan(args.experiment, axes, plain, args.name)  # composes (and validates) without writing
        for index, (cell, assignment) in enumerate(zip(plan.names, plan.cells)):
            cfg = plan.cell_config(assignment)
            header = (f"--- # cell {index + 1}/{len(plan.cells)} {cell}: {' '.join(plan.cell_overrides(assignment))}"
                      f"\n# run directory: {plan.run_dir(cell)}\n")
            _show_config(args, cfg, header)
        return _dry_run_done(args, f"{len(plan.cells)} sweep cell configurations")
    print(f"[corr3d] sweep results: {run_sweep(args.experiment, axes, plain, args.name)}", flush=True)
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.gpu:
        from corr3d.perf._gpu import run_gpu_check  # deferred: a command loads only its own stack

        run_gpu_check()
        return 0
    from corr3d.perf import run_benchmarks  # deferred: a command loads only its own stack

    run_benchmarks(only=args.only, quick=args.quick, out=args.out)
    return 0


def _import_checkpoint(args: argparse.Namespace) -> int:
    from corr3d.models.checkpoints import import_checkpoint  # deferred: a command loads only its own stack

    out = args.out or str(Path(args.path).with_suffix("")) + "_corr3d"
    saved = import_checkpoint(args.path, args.backbone, out, base_weights=args.base_weights,
                              timm_kwargs=json.loads(args.timm_kwargs) if args.timm_kwargs else None,
                              trust_pickle=args.trust_pickle)
    print(f"wrote {saved}; evaluate with: corr3d eval EXP --ckpt {saved}")
    return 0


def _add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="validate the whole configuration, print it resolved and exit: no directory, no weights")
    p.add_argument("--print-config", action="store_true", help="print the validated, resolved configuration and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corr3d", description=__doc__,
                                     epilog="--debug (anywhere on the line): show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (
        ("train", _train, "finetune a backbone (and measure equivariance before/after)"),
        ("eval", _eval, "evaluate backbones/adapters on the downstream benchmarks"),
        ("render", _render, "render the experiment's objects (multiview RGB/mask/depth/xyz)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("experiment", help=f"experiment name ({', '.join(available_experiments())}) or YAML path")
        p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_steps=10")
        _add_dry_run(p)
        if name == "eval":
            p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all whose data exists)")
            p.add_argument("--ckpt", default=None, help="adapter file or run directory to evaluate")
            p.add_argument("--backbone", default=None, help="backbone to evaluate instead of the experiment's")
        p.set_defaults(func=fn)
    p = sub.add_parser("sweep", help="train a grid of configurations (key=v1,v2 ...) and gather results.csv")
    p.add_argument("experiment", help="experiment name or YAML path (its sweep.axes are the default grid)")
    p.add_argument("overrides", nargs="*", help="key=v1,v2 adds a sweep axis (seed=0,1,2); key=value overrides")
    p.add_argument("--axis", action="append", help="a one-value axis or a value with commas (key=[a,b]) as an axis")
    p.add_argument("--name", default=None, help="sweep name: runs/<experiment>/sweeps/<name>/")
    _add_dry_run(p)
    p.set_defaults(func=_sweep)
    p = sub.add_parser("import-checkpoint", help="convert a 3DCorrEnhance (authors') .ckpt into a corr3d adapter")
    p.add_argument("path", help="the authors' Lightning checkpoint, e.g. dinov2_base.ckpt")
    p.add_argument("--backbone", required=True, help="corr3d backbone it was trained on, e.g. dinov2_b14")
    p.add_argument("--out", default=None, help="adapter directory (default: <path without .ckpt>_corr3d)")
    p.add_argument("--base-weights", default="hf", help="backbone weights the adapter is loaded on (default hf)")
    p.add_argument("--timm-kwargs", default=None, help="JSON timm kwargs (only for non-standard model sizes)")
    p.add_argument("--trust-pickle", action="store_true", help="torch.load(weights_only=False): trusted files only")
    p.set_defaults(func=_import_checkpoint)
    p = sub.add_parser("bench", help="throughput / memory benchmarks")
    p.add_argument("--only", default=None, help="comma-separated benchmark groups")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--out", default="runs/bench.json", help="where to write the JSON results")
    p.add_argument("--gpu", action="store_true", help="the prepared GPU check (make bench-gpu): one table, <= 8 min")
    p.set_defaults(func=_bench)
    return parser


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv`` with options and positionals (experiment, ``key=value`` overrides) in any order: each
    subcommand uses ``parse_intermixed_args`` (argparse cannot intermix through a subparser action itself)."""
    parser = parser or build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


# errno -> what to do; the message names the path the operating system reported
_OS_FIXES = {
    errno.ENOSPC: "free space on the disk holding {path} (df -h), or point output_dir= / data_root= to a disk with "
                  "room",
    errno.EDQUOT: "free space within your quota on the disk holding {path}, or point output_dir= / data_root= "
                  "elsewhere",
    errno.EROFS: "{path} is on a read-only file system: set output_dir= (and data_root= if data must be written) to a "
                 "writable directory",
    errno.EACCES: "make {path} writable/readable for this user (ls -ld), or set output_dir= / data_root= to a "
                  "directory you own",
    errno.EPERM: "make {path} writable/readable for this user (ls -ld), or set output_dir= / data_root= to a "
                 "directory you own",
}


def _os_user_error(err: BaseException) -> OSError | None:
    """The disk-full / read-only / permission OSError behind ``err`` (itself or its explicit cause), if any."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError) and err.errno in _OS_FIXES:
            return err
        err, seen = err.__cause__, seen + 1
    return None


def _report_os_error(err: OSError) -> int:
    paths = [str(p) for p in (err.filename, getattr(err, "filename2", None)) if p is not None]
    path = " -> ".join(paths)
    reason = err.strerror or os.strerror(err.errno)
    where = f"{path}: " if path else ""
    print(f"corr3d: error: {where}{reason.lower() if reason else type(err).__name__}"
          + ("" if path else " (the operating system named no path)"), file=sys.stderr)
    print(f"corr3d:   fix: {_OS_FIXES[err.errno].format(path=path or 'the output or data directory')}",
          file=sys.stderr)
    return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user fixes by changing an input (file, identifier, config, weights); printed without a traceback."""
    from corr3d.assets.meshes import MeshLoadError  # deferred: a command loads only its own stack
    from corr3d.errors import Corr3dUserError  # deferred: a command loads only its own stack
    from corr3d.models.weights import WeightsUnavailableError  # deferred: a command loads only its own stack

    return Corr3dUserError, ConfigError, FileNotFoundError, WeightsUnavailableError, MeshLoadError


def _fix_for(err: BaseException) -> str | None:
    fix = getattr(err, "fix", None)
    if fix:
        return fix
    if isinstance(err, ConfigError):
        return "every key, its type and its range are documented in experiments/base.yaml"
    if isinstance(err, FileNotFoundError):
        return "check the path (relative paths are relative to the current directory) or create the file"
    return None


def _save_traceback() -> str | None:
    """Keep the hidden traceback of an unexpected error in a file, so a bug report needs no re-run."""
    try:
        fd, path = tempfile.mkstemp(prefix="corr3d-error-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(traceback.format_exc())
        return path
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """The error boundary: user-facing errors print the file and the fix and exit non-zero (2, 3 for a locked run);
    unexpected ones print one line and exit 1; ``--debug`` (anywhere) or CORR3D_DEBUG=1 shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CORR3D_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("corr3d: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if debug:
            raise
        kind = "config error" if isinstance(err, ConfigError) else "error"
        print(f"corr3d: {kind}: {err}", file=sys.stderr)
        fix = _fix_for(err)
        if fix:
            print(f"corr3d:   fix: {fix}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except Exception as err:  # noqa: BLE001 - the boundary: anything else is a bug, reported in one line
        if debug:
            raise
        os_error = _os_user_error(err)
        if os_error is not None:  # disk full, read-only file system, permission denied: the user's to fix
            return _report_os_error(os_error)
        saved = _save_traceback()
        print(f"corr3d: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        print("corr3d:   this is probably a bug; re-run with --debug for the traceback"
              + (f" (saved to {saved})" if saved else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

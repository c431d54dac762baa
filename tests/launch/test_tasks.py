"""Entry points of SLURM tasks: derived from the imported functions, and unchanged on the wire (a job pickled by an
older version and requeued after an upgrade names the same functions)."""
from __future__ import annotations

import pytest

from corr3d.launch.tasks import entry_name, resolve_entry


def test_entry_names_of_the_library_entry_points_round_trip():
    from corr3d.eval.run import gather_eval, run_eval_part
    from corr3d.training.run import train

    # the names tasks carried when they were written by hand: jobs already queued keep resolving
    assert entry_name(train) == "corr3d.training.run:train"
    assert entry_name(run_eval_part) == "corr3d.eval.run:run_eval_part"
    assert entry_name(gather_eval) == "corr3d.eval.run:gather_eval"
    for fn in (train, run_eval_part, gather_eval):
        assert resolve_entry(entry_name(fn)) is fn


def test_a_function_a_job_cannot_import_by_name_is_refused():
    def local(cfg):
        return cfg

    with pytest.raises(ValueError, match=r"cannot be imported by name.*top level of an importable module"):
        entry_name(local)
    with pytest.raises(ValueError, match="cannot be imported by name"):
        entry_name(lambda cfg: cfg)


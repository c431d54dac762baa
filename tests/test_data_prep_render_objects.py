"""data_prep/render_objects.py: renders what it can, names what failed, and exits 2 when anything failed."""
from __future__ import annotations

import importlib.util

from corr3d.config import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("render_objects", REPO_ROOT / "data_prep" / "render_objects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_object_makes_the_exit_status_2(tmp_path, capsys):
    broken = tmp_path / "broken.obj"
    broken.write_text("this is not a mesh\n")
    code = _script().main([str(broken), "procedural:sphere_astronaut", "--out", str(tmp_path / "out"), "--workers",
                           "0", "--quiet", "--set", "width=64", "height=64", "focal=70.0",
                           "icosphere_subdivisions=0"])
    out = capsys.readouterr().out
    assert code == 2 and "1/2 objects rendered" in out and f"failed: {broken}" in out

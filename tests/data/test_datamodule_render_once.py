"""For tests/data/test_datamodule.py (helper h3): a training run renders its objects with one ensure_rendered call."""
from __future__ import annotations

import corr3d.data.datamodule as datamodule_module
from corr3d.data.datamodule import build_datamodule
from tests.data.test_datamodule import OBJECTS, small_config


def test_one_ensure_rendered_call_serves_prepare_data_the_datasets_and_the_probe(tmp_path, monkeypatch):
    calls = []
    real = datamodule_module.ensure_rendered

    def counting(specs, root, render_cfg=None, **kwargs):
        calls.append(list(specs))
        return real(specs, root, render_cfg, **kwargs)

    monkeypatch.setattr(datamodule_module, "ensure_rendered", counting)
    val = "procedural:torus_checker"
    dm = build_datamodule(small_config(tmp_path, f"data.val_objects=[{val}]", "data.val_pairs=2"))
    probe = dm.probe_dirs()          # training's validation callback (training/run.py), before Lightning starts
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [[*OBJECTS, val]]
    assert [p.name for p in probe] == [p.name for p in dm.object_dirs([val])] and len(probe) == 1
    assert len(dm.train_dataset.objects) == 2 and len(dm.val_dataset.objects) == 1

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from corr3d.utils.io import atomic_write, atomic_write_text, replace_dir, temp_sibling, write_json


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_text_and_json_written_without_leftovers(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "one")
    atomic_write_text(tmp_path / "sub" / "a.txt", "two")
    write_json(tmp_path / "sub" / "b.json", {"x": 1})
    assert (tmp_path / "sub" / "a.txt").read_text() == "two"
    assert (tmp_path / "sub" / "b.json").read_text() == '{\n  "x": 1\n}\n'
    assert _hidden(tmp_path / "sub") == []


def test_json_holds_the_values_results_carry_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"b": np.float32(0.5), "a": np.arange(3), "t": torch.tensor(2.0), "p": Path("x/y")},
               indent=None, sort_keys=True)
    assert target.read_text() == '{"a": [0, 1, 2], "b": 0.5, "p": "x/y", "t": 2.0}\n'
    assert json.loads(target.read_text())["a"] == [0, 1, 2]
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["b"] == 0.5 and _hidden(tmp_path) == []


def test_failed_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # a kill between write and rename

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and _hidden(tmp_path) == []


def test_temp_name_keeps_the_suffix_and_is_unique(tmp_path):
    seen = []
    atomic_write(tmp_path / "fig.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path and seen[0].name.startswith(".fig.")
    assert temp_sibling(tmp_path / "a.txt") != temp_sibling(tmp_path / "a.txt")


def test_readers_never_see_a_partial_file(tmp_path):
    target = tmp_path / "data.txt"
    contents = ["a" * 200_000, "b" * 300_000]
    atomic_write_text(target, contents[0])
    stop, seen = threading.Event(), set()

    def writer():
        for k in range(60):
            atomic_write_text(target, contents[k % 2])
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        seen.add(target.read_text())
    thread.join()
    assert seen <= set(contents)


def test_replace_dir_swaps_a_finished_folder(tmp_path):
    new = tmp_path / ".build"
    new.mkdir()
    (new / "f").write_text("1")
    replace_dir(new, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_text() == "1" and not new.exists()
    again = tmp_path / ".build2"
    again.mkdir()
    (again / "g").write_text("2")
    replace_dir(again, tmp_path / "out", old=tmp_path / ".out.old")
    assert sorted(os.listdir(tmp_path / "out")) == ["g"] and _hidden(tmp_path) == []

"""lwm_core.checkpoint.atomic's appended line files (needle results, vqgan encode's JSONL): whole lines in,
a torn last line cut off by the next run, even one longer than a read block."""

from __future__ import annotations

import json

from lwm_core.checkpoint.atomic import append_lines, drop_torn_line


def test_append_lines_adds_whole_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    append_lines(str(path), ["1\n", "2\n"])
    append_lines(str(path), [])
    append_lines(str(path), ["3\n"])
    assert path.read_text() == "1\n2\n3\n"


def test_drop_torn_line_reads_back_from_the_end(tmp_path):
    path = tmp_path / "big.jsonl"
    whole = "".join(json.dumps({"i": i, "pad": "x" * 5000}) + "\n" for i in range(40))  # 200 KB
    path.write_text(whole + '{"i": 40, "pad": "' + "x" * 70000)  # a torn line longer than one read block
    drop_torn_line(str(path))
    assert path.read_text() == whole
    drop_torn_line(str(path))  # a whole file is left alone
    assert path.read_text() == whole
    path.write_text("no newline at all")
    drop_torn_line(str(path))
    assert path.read_text() == ""

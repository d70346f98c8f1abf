"""Loading and validating users' labelled data: every bad-row kind, every format, strict mode,
column mapping, the no-silent-drop invariant and the ``tierwise data validate`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.cli import main
from classifier.data.loading import LoadConfig, LoadResult, load_labelled, parse_column_map
from classifier.data.schema import DEFAULT_SCHEMA_PATH, LabelSchema
from classifier.data.validation import REJECT_KINDS
from classifier.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_YAML = DEFAULT_SCHEMA_PATH


@pytest.fixture(scope="module")
def schema() -> LabelSchema:
    return LabelSchema.from_yaml(SCHEMA_YAML)


def jline(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def assert_accounted(result: LoadResult) -> None:
    assert result.n_read == result.n_ok + len(result.rejects)
    assert len(result.frame) == result.n_ok


GOOD = {"text": "write a haiku about rain", "tier": "cheap", "task": "chat_writing",
        "sensitivity": "none"}

# (bad line, kind, field, words the reason must contain)
BAD_JSONL_CASES = {
    "missing_text": (jline({"tier": "cheap"}), "text", ["missing", "text"]),
    "empty_text": (jline({"text": "  \t\n ", "tier": "cheap"}), "text", ["empty"]),
    "unknown_label": (jline({"text": "hi", "task": "poetry"}), "task",
                      ["'poetry'", "'task'", "chat_writing", "code", "math_reasoning", "knowledge"]),
    "wrong_type_label_number": (jline({"text": "hi", "tier": 1}), "tier", ["tier", "number"]),
    "wrong_type_label_list": (jline({"text": "hi", "sensitivity": ["pii"]}), "sensitivity",
                              ["sensitivity", "list"]),
    "wrong_type_text": (jline({"text": 42, "tier": "cheap"}), "text", ["string", "number"]),
    "invalid_utf8": (b'{"text": "caf\xe9 au lait", "tier": "cheap"}', None, ["UTF-8"]),
    "text_too_long": (jline({"text": "x" * 101, "tier": "cheap"}), "text", ["101", "max_chars=100"]),
    "malformed_json": (b'{"text": "hi", "tier": "cheap"', None, ["malformed JSON"]),
    "bad_soft_target_length": (jline({"text": "hi", "tier": "cheap", "tier_soft": [1.0]}),
                               "tier_soft", ["1 values", "2 classes"]),
    "bad_soft_target_sum": (jline({"text": "hi", "tier": "cheap", "tier_soft": [0.5, 0.2]}),
                            "tier_soft", ["sums to 0.7"]),
    "no_labels": (jline({"text": "hi", "tier": None, "task": None}), None, ["no label"]),
}


def _kind(case: str) -> str:
    return next(k for k in REJECT_KINDS if case.startswith(k))


@pytest.mark.parametrize("case", sorted(BAD_JSONL_CASES))
def test_each_bad_row_kind_in_jsonl_is_reported_with_row_reason_and_hint(tmp_path, schema, case):
    bad, field, words = BAD_JSONL_CASES[case]
    # the bad row sits between good rows: line 2, and nothing around it is lost
    path = write_lines(tmp_path / "logs.jsonl", [jline(GOOD), bad, jline({**GOOD, "text": "sum 2+2"})])
    result = load_labelled(path, schema, LoadConfig(max_chars=100))

    assert_accounted(result)
    assert (result.n_read, result.n_ok) == (3, 2)
    assert list(result.frame["text"]) == ["write a haiku about rain", "sum 2+2"]
    [rej] = result.rejects
    assert (rej.file, rej.row, rej.field, rej.kind, rej.unit) == (str(path), 2, field, _kind(case), "line")
    for word in words:
        assert word in rej.reason
    assert rej.hint
    assert str(rej).startswith(f"{path}:2: ")

    written = [json.loads(line) for line in (tmp_path / "logs.jsonl.rejects.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert len(written) == 1 and written[0]["row"] == 2 and written[0]["kind"] == _kind(case)
    assert result.rejects_path == tmp_path / "logs.jsonl.rejects.jsonl"


def test_null_labels_for_some_heads_are_kept_as_none(tmp_path, schema):
    path = write_lines(tmp_path / "d.jsonl", [
        jline({"text": "my password is hunter2", "sensitivity": "credential", "tier": None}),
        jline({"text": "prove sqrt 2 is irrational", "tier": "frontier", "task": "math_reasoning",
               "tier_soft": [0.25, 0.75], "source": "mine", "id": 7}),
    ])
    result = load_labelled(path, schema, LoadConfig())
    assert not result.rejects
    frame = result.frame
    assert list(frame.columns[:5]) == ["text", "tier", "task", "sensitivity", "tier_soft"]
    assert {"source", "id"} <= set(frame.columns)  # passthrough columns survive
    assert frame["tier"].tolist() == [None, "frontier"]
    assert frame["task"].tolist() == [None, "math_reasoning"]
    assert frame["sensitivity"].tolist() == ["credential", None]
    assert frame["tier_soft"].tolist() == [None, [0.25, 0.75]]
    assert not (tmp_path / "d.jsonl.rejects.jsonl").exists()


def test_one_invalid_utf8_line_costs_only_that_line(tmp_path, schema):
    lines = [jline({**GOOD, "text": f"prompt {i}"}) for i in range(5)]
    lines[3] = b'{"text": "\xff\xfe broken", "tier": "cheap"}'
    result = load_labelled(write_lines(tmp_path / "u.jsonl", lines), schema, LoadConfig())
    assert result.n_ok == 4 and [r.row for r in result.rejects] == [4]
    assert "\\xff" in result.rejects[0].raw  # the raw line is kept, bad bytes made visible
    # the rejects file itself is valid UTF-8
    (tmp_path / "u.jsonl.rejects.jsonl").read_bytes().decode("utf-8")


def test_unknown_label_hint_suggests_the_near_miss(tmp_path, schema):
    path = write_lines(tmp_path / "d.jsonl", [jline({"text": "hi", "tier": "Frontier"})])
    [rej] = load_labelled(path, schema, LoadConfig()).rejects
    assert "'frontier'" in rej.hint


def test_a_row_with_several_problems_is_one_reject_naming_them_all(tmp_path, schema):
    path = write_lines(tmp_path / "d.jsonl", [jline({"text": "", "tier": "huge", "task": 3})])
    result = load_labelled(path, schema, LoadConfig())
    assert_accounted(result)
    [rej] = result.rejects
    assert rej.kind == "empty_text"
    assert "'huge'" in rej.reason and "task" in rej.reason


def test_blank_lines_are_not_rows_but_line_numbers_stay_physical(tmp_path, schema):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jline(GOOD) + b"\r\n\r\n  \n" + jline({"text": "x", "tier": "nope"}) + b"\r\n")
    result = load_labelled(path, schema, LoadConfig())
    assert (result.n_read, result.n_ok) == (2, 1)
    assert result.rejects[0].row == 4


def test_count_invariant_holds_on_a_mixed_file(tmp_path, schema):
    bad = [case[0] for case in BAD_JSONL_CASES.values()]
    good = [jline({**GOOD, "text": f"good {i}"}) for i in range(len(bad))]
    lines = [line for pair in zip(good, bad, strict=True) for line in pair]
    result = load_labelled(write_lines(tmp_path / "m.jsonl", lines), schema, LoadConfig(max_chars=100))
    assert_accounted(result)
    assert result.n_read == len(lines) and result.n_ok == len(good)
    assert [r.row for r in result.rejects] == list(range(2, len(lines) + 1, 2))
    assert set(result.reject_counts()) == set(REJECT_KINDS) - {"malformed_csv"}
    written = (tmp_path / "m.jsonl.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(written) == len(result.rejects)


def test_strict_mode_raises_on_the_first_bad_row_with_its_line(tmp_path, schema):
    path = write_lines(tmp_path / "s.jsonl", [
        jline(GOOD), jline(GOOD), jline({"text": "hi", "tier": "gold"}), b"{not json",
    ])
    with pytest.raises(DataError, match=r"s\.jsonl:3: unknown label 'gold' for head 'tier'"):
        load_labelled(path, schema, LoadConfig(strict=True))
    assert not (tmp_path / "s.jsonl.rejects.jsonl").exists()


def test_rejects_path_override_and_stale_rejects_are_removed_once_fixed(tmp_path, schema):
    path = write_lines(tmp_path / "d.jsonl", [jline(GOOD), jline({"text": "hi"})])
    target = tmp_path / "out" / "bad.jsonl"
    result = load_labelled(path, schema, LoadConfig(rejects_path=target))
    assert result.rejects_path == target and len(target.read_text().splitlines()) == 1
    write_lines(path, [jline(GOOD)])
    result = load_labelled(path, schema, LoadConfig(rejects_path=target))
    assert result.rejects_path is None and not target.exists()
    with pytest.raises(ConfigError, match="rejects_path"):
        load_labelled(path, schema, LoadConfig(rejects_path=path))


def test_whole_file_problems_raise_data_error(tmp_path, schema):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with pytest.raises(DataError, match="no data rows"):
        load_labelled(empty, schema)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([GOOD, GOOD], indent=1))
    with pytest.raises(DataError, match="JSON array"):
        load_labelled(array, schema)
    with pytest.raises(DataError, match="no such file"):
        load_labelled(tmp_path / "nope.jsonl", schema)
    odd = tmp_path / "d.txt"
    odd.write_text("x")
    with pytest.raises(DataError, match="--format"):
        load_labelled(odd, schema)
    no_labels = write_lines(tmp_path / "nl.jsonl", [jline({"text": "hi", "label": "cheap"})])
    with pytest.raises(DataError, match=r"none of the label columns.*'label'"):
        load_labelled(no_labels, schema)


# -- column mapping ---------------------------------------------------------------------------
def test_column_mapping_renames_the_files_columns(tmp_path, schema):
    path = write_lines(tmp_path / "m.jsonl", [
        jline({"prompt": "hello", "label": "cheap", "probs": [0.9, 0.1], "req": "r1"}),
        jline({"prompt": "solve x", "label": "expensive", "req": "r2"}),
    ])
    config = LoadConfig(column_map="text=prompt,tier=label,tier_soft=probs,request_id=req")
    result = load_labelled(path, schema, config)
    assert result.frame["text"].tolist() == ["hello"]
    assert result.frame["tier_soft"].tolist() == [[0.9, 0.1]]
    assert result.frame["request_id"].tolist() == ["r1"]
    assert "prompt" not in result.frame.columns and "label" not in result.frame.columns
    [rej] = result.rejects
    assert rej.field == "tier" and rej.raw["label"] == "expensive"  # raw stays in the file's terms


def test_missing_mapped_column_raises_naming_it_and_listing_the_files_columns(tmp_path, schema):
    path = write_lines(tmp_path / "m.jsonl", [jline({"prompt": "hello", "label": "cheap"})])
    with pytest.raises(DataError) as info:
        load_labelled(path, schema, LoadConfig(column_map={"text": "query", "tier": "label"}))
    assert "'query'" in str(info.value) and "['prompt', 'label']" in str(info.value)
    with pytest.raises(DataError, match=r"no 'text' column.*\['prompt', 'label'\]"):
        load_labelled(path, schema, LoadConfig(column_map={"tier": "label"}))


def test_mapping_onto_a_name_the_file_already_uses_is_refused(tmp_path, schema):
    path = write_lines(tmp_path / "m.jsonl", [jline({"text": "a", "clean": "b", "tier": "cheap"})])
    with pytest.raises(DataError, match="original_text=text"):
        load_labelled(path, schema, LoadConfig(column_map={"text": "clean"}))
    result = load_labelled(path, schema, LoadConfig(column_map={"text": "clean", "original_text": "text"}))
    assert result.frame.loc[0, "text"] == "b" and result.frame.loc[0, "original_text"] == "a"


def test_load_config_is_validated_naming_the_field():
    for kwargs, name in [
        ({"format": "xlsx"}, "format"),
        ({"max_chars": 0}, "max_chars"),
        ({"max_chars": "100"}, "max_chars"),
        ({"strict": "yes"}, "strict"),
        ({"column_map": "text"}, "column_map"),
        ({"column_map": {"text": "a", "tier": "a"}}, "column_map"),
        ({"column_map": {"text": ""}}, "column_map"),
        ({"rejects_path": ""}, "rejects_path"),
    ]:
        with pytest.raises(ConfigError, match=name):
            LoadConfig(**kwargs)
    assert LoadConfig(format="JSON").format == "jsonl"
    assert parse_column_map(" text = prompt , tier=label ,") == {"text": "prompt", "tier": "label"}


# -- CSV --------------------------------------------------------------------------------------
def test_csv_happy_path_with_quoted_newlines_empty_nulls_and_soft_lists(tmp_path, schema):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"\xef\xbb\xbftext,tier,task,sensitivity,tier_soft,note\r\n"  # Excel's BOM
        b'"line one\nline two, with comma",frontier,code,,"[0.1, 0.9]",n1\r\n'
        b"plain prompt,,knowledge,none,,\r\n"
    )
    result = load_labelled(path, schema, LoadConfig())
    assert not result.rejects and result.n_ok == 2
    frame = result.frame
    assert frame["text"].tolist() == ["line one\nline two, with comma", "plain prompt"]
    assert frame["tier"].tolist() == ["frontier", None]
    assert frame["sensitivity"].tolist() == [None, "none"]
    assert frame["tier_soft"].tolist() == [[0.1, 0.9], None]
    assert frame["note"][0] == "n1" and frame["note"].isna().tolist() == [False, True]


def test_csv_bad_records_are_numbered_by_record_and_name_their_line(tmp_path, schema):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"text,tier\n"
        b'"two\nlines",cheap\n'        # record 1, lines 2-3
        b"hello,premium\n"             # record 2, line 4: unknown label
        b"too,many,fields\n"           # record 3: malformed
        b"caf\xe9,cheap\n"             # record 4: invalid UTF-8
        b"   ,cheap\n"                 # record 5: empty text
        b"fine,frontier\n"             # record 6
    )
    result = load_labelled(path, schema, LoadConfig())
    assert_accounted(result)
    assert result.frame["text"].tolist() == ["two\nlines", "fine"]
    got = [(r.row, r.kind, r.unit) for r in result.rejects]
    assert got == [(2, "unknown_label", "record"), (3, "malformed_csv", "record"),
                   (4, "invalid_utf8", "record"), (5, "empty_text", "record")]
    assert "line 4" in result.rejects[0].reason
    assert result.rejects[2].field == "text" and result.rejects[2].raw["text"] == "caf\\xe9"
    with pytest.raises(DataError, match=r"d\.csv:2: unknown label 'premium'.*data record number"):
        load_labelled(path, schema, LoadConfig(strict=True))


# -- Parquet ----------------------------------------------------------------------------------
def test_parquet_happy_path_and_bad_rows_by_zero_based_index(tmp_path, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({
        "prompt": ["hello", "", "sum 1+2", None],
        "tier": ["cheap", "cheap", "frontier", "cheap"],
        "tier_soft": [[0.8, 0.2], None, [0.0, 1.0], None],
        "tokens": [3, 1, 5, 2],
    }), path)
    result = load_labelled(path, schema, LoadConfig(column_map={"text": "prompt"}))
    assert_accounted(result)
    assert result.frame["text"].tolist() == ["hello", "sum 1+2"]
    assert result.frame["tokens"].tolist() == [3, 5]
    assert result.frame["tier_soft"].tolist() == [[0.8, 0.2], [0.0, 1.0]]
    assert [(r.row, r.kind, r.unit) for r in result.rejects] == [
        (1, "empty_text", "index"), (3, "missing_text", "index")]
    with pytest.raises(DataError, match=r"d\.parquet:1: .*0-based row index"):
        load_labelled(path, schema, LoadConfig(column_map={"text": "prompt"}, strict=True))


# -- Hugging Face datasets --------------------------------------------------------------------
def _hf_dataset():
    import datasets

    features = datasets.Features({
        "text": datasets.Value("string"),
        "tier": datasets.ClassLabel(names=["cheap", "frontier"]),
        "task": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict({
        "text": ["hello", "write a sort in python", "  ", "what is 2+2"],
        "tier": [0, 1, 0, -1],          # -1: no label
        "task": ["chat_writing", "code", "code", "maths"],
    }, features=features)


@pytest.mark.slow
def test_hf_save_to_disk_directory(tmp_path, schema):
    ds = _hf_dataset()
    ds.save_to_disk(str(tmp_path / "ds"))
    result = load_labelled(tmp_path / "ds", schema, LoadConfig())
    assert result.format == "hf"
    assert_accounted(result)
    # ClassLabel ints come back as class names
    assert result.frame["tier"].tolist() == ["cheap", "frontier"]
    assert [(r.row, r.kind) for r in result.rejects] == [(2, "empty_text"), (3, "unknown_label")]
    assert (tmp_path / "ds.rejects.jsonl").is_file()


def test_hf_in_memory_dataset_and_dataset_dict(tmp_path, schema):
    import datasets

    ds = _hf_dataset()
    good = ds.select([0, 1]).with_format("numpy")  # whatever format the caller set
    result = load_labelled(good, schema)
    assert not result.rejects and result.frame["text"].tolist() == ["hello", "write a sort in python"]
    assert result.frame["task"].tolist() == ["chat_writing", "code"]

    result = load_labelled(ds, schema, LoadConfig(rejects_path=tmp_path / "r.jsonl"))
    assert_accounted(result)
    assert [r.row for r in result.rejects] == [2, 3]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2

    with pytest.raises(DataError, match=r"splits \['train'\].*dataset\['train'\]"):
        load_labelled(datasets.DatasetDict(train=ds), schema)
    with pytest.raises(DataError, match="index"):
        load_labelled(ds, schema, LoadConfig(strict=True))


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_validate_exit_codes_and_summary(tmp_path, capsys):
    clean = write_lines(tmp_path / "clean.jsonl", [jline(GOOD), jline({"text": "q", "tier": "frontier"})])
    assert main(["data", "validate", str(clean), "--schema", str(SCHEMA_YAML)]) == 0
    out = capsys.readouterr().out
    assert "rows read: 2  ok: 2  rejected: 0" in out
    assert "cheap=1 frontier=1 null=0" in out

    dirty = write_lines(tmp_path / "dirty.csv", [
        b"prompt,label", b"hello,cheap", b"bye,platinum", b",cheap"])
    argv = ["data", "validate", str(dirty), "--schema", str(SCHEMA_YAML),
            "--columns", "text=prompt,tier=label", "--rejects", str(tmp_path / "rej.jsonl")]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "rows read: 3  ok: 1  rejected: 2" in out
    assert "unknown_label" in out and "empty_text" in out
    assert f"rejects written to {tmp_path / 'rej.jsonl'}" in out
    assert len((tmp_path / "rej.jsonl").read_text().splitlines()) == 2

    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "dirty.csv:2: unknown label 'platinum'" in err

    assert main(["data", "validate", str(dirty), "--columns", "text=nope"]) == 2
    assert "'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_validate(tmp_path):
    script = Path(sys.executable).parent / "tierwise"
    if not script.exists():
        pytest.skip("the tierwise console script is not installed in this environment")
    path = write_lines(tmp_path / "d.jsonl", [jline(GOOD), jline({"text": "hi", "tier": 2})])
    proc = subprocess.run(
        [str(script), "data", "validate", str(path), "--schema", str(SCHEMA_YAML), "--max-chars", "50"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "rows read: 2  ok: 1  rejected: 1" in proc.stdout
    assert "d.jsonl:2:" in proc.stdout and "wrong_type" in proc.stdout
    assert (tmp_path / "d.jsonl.rejects.jsonl").is_file()

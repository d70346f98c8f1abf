"""The one reader of the built data set: every command's --limit --seed picks the same rows."""

from __future__ import annotations

import pytest
from test_trainer import make_frame  # tests/ is on sys.path under pytest


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "dataset.parquet"
    make_frame({"train": 50, "calibration": 40, "test": 60}, seed=1).to_parquet(path)
    return path


def test_commands_pick_the_same_rows_for_the_same_limit_and_seed(data_file):
    from classifier.data.reader import read_dataset, select_split
    from classifier.evaluation.calibrate_cmd import _load_splits
    from classifier.evaluation.report import _take

    frame = read_dataset(data_file.parent)
    for limit, seed in ((25, 0), (25, 7), (10, 7)):
        calibrate = _load_splits(data_file, limit, seed)["test"]["id"].tolist()
        report = _take(frame, "test", limit, seed, data_file)["id"].tolist()
        training = select_split(frame, "test", limit, seed)["id"].tolist()  # train, distil, tune, cascade, drift
        assert calibrate == report == training and len(training) == limit
    # the seed matters, the data set's order is kept, and no limit is every row of the split
    assert select_split(frame, "test", 25, 0)["id"].tolist() != select_split(frame, "test", 25, 7)["id"].tolist()
    picked = select_split(frame, "test", 25, 7)["id"].tolist()
    assert picked == sorted(picked)
    assert len(select_split(frame, "test", None, 7)) == 60 == len(select_split(frame, "test", 600, 7))


def test_reader_errors_name_the_file(tmp_path, data_file):
    from classifier.data.reader import read_dataset
    from classifier.errors import DataError

    with pytest.raises(DataError, match="dataset.parquet does not exist"):
        read_dataset(tmp_path)
    frame = read_dataset(data_file)
    frame.loc[3, "text"] = None
    frame.drop(columns=["split"]).to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(DataError, match="split"):
        read_dataset(tmp_path / "nosplit.parquet")
    frame.to_parquet(tmp_path / "notext.parquet")
    assert len(read_dataset(tmp_path / "notext.parquet")) == len(frame)
    with pytest.raises(DataError, match="no text"):
        read_dataset(tmp_path / "notext.parquet", require_text=True)

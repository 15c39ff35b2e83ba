"""The params.yaml loader: strict keys and types, defaults, and the repo's own params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarec.config import (Config, ConfigError, config_from_dict, default_params_path,
                            load_config)
from tests.conftest import REPO


def test_repo_params_load():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.dataset == "ml-100k"
    assert cfg.data.raw_dir == "data"


def test_dataclass_defaults_are_the_shipped_params():
    """`Config()` in a test is the model the pipeline trains: every default equals params.yaml."""
    assert load_config(REPO / "params.yaml") == Config()


def test_params_file_from_the_environment(tmp_path, monkeypatch):
    other = tmp_path / "other.yaml"
    other.write_text("seed: 7\n")
    monkeypatch.setenv("METAREC_PARAMS", str(other))
    assert default_params_path() == other and load_config().seed == 7
    monkeypatch.delenv("METAREC_PARAMS")
    assert default_params_path() == Path("params.yaml")


def test_one_name_for_the_dataset_dvc_file():
    assert Config().data.dvc_file == "data.dvc"
    assert config_from_dict({"data": {"raw_dir": "raw/ml/"}}).data.dvc_file == "raw/ml.dvc"


def test_defaults_and_override():
    cfg = config_from_dict({"data": {"dataset": "ml-1m"}, "seed": 3})
    assert cfg.data.dataset == "ml-1m" and cfg.seed == 3
    assert cfg.data.prepared_dir == Config().data.prepared_dir


def test_config_is_frozen():
    cfg = config_from_dict({})
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"dat": {}}, "'dat'"),
        ({"data": {"datset": "ml-1m"}}, "'data.datset'"),
        ({"data": {"csv": {"columns": {"userid": "u"}}}}, "'data.csv.columns.userid'"),
        ({"data": {"dataset": "ml-20m"}}, "'data.dataset' must be one of"),
        ({"seed": "0"}, "'seed' must be an integer"),
        ({"seed": True}, "'seed' must be an integer"),
        ({"data": {"csv": {"item_multi": "genres"}}}, "'data.csv.item_multi' must be a list"),
        ({"data": "ml-100k"}, "'data' must be a mapping"),
    ],
)
def test_bad_keys_and_types_are_named(raw, needle):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert needle in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_lists_become_tuples():
    cfg = config_from_dict({"data": {"csv": {"item_multi": ["tags"]}}})
    assert cfg.data.csv.item_multi == ("tags",)

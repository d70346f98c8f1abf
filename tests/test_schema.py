import pytest

from classifier.data.schema import Head, LabelSchema
from classifier.errors import SchemaError


def test_default_schema_roundtrips_through_yaml(tmp_path):
    schema = LabelSchema.default()
    schema.to_yaml(tmp_path / "s.yaml")
    again = LabelSchema.from_yaml(tmp_path / "s.yaml")
    assert again.head_names == ["tier", "task", "sensitivity"]
    assert again.head("tier").classes == ("cheap", "frontier")
    assert again.head("sensitivity").negative_class == "none"


def test_shipped_schema_round_trips_and_is_the_default():
    import yaml

    from classifier.data.schema import DEFAULT_SCHEMA_PATH

    assert LabelSchema.default().to_dict() == yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8"))
    assert LabelSchema.default().head_names == ["tier", "task", "sensitivity"]


def test_custom_heads_are_allowed():
    schema = LabelSchema.from_dict({"heads": [{"name": "lang", "classes": ["en", "de", "fr"]}]})
    assert schema.head("lang").index("de") == 1


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({}, "heads is missing"),
        ({"heads": [{"name": "Tier", "classes": ["a", "b"]}]}, "head name"),
        ({"heads": [{"name": "t", "classes": ["a"]}]}, "at least two"),
        ({"heads": [{"name": "t", "classes": ["a", "a"]}]}, "duplicate classes"),
        ({"heads": [{"name": "t", "classes": ["a", "b"], "colour": 1}]}, "unknown keys"),
        ({"heads": [{"name": "t", "classes": ["a", "b"], "positive_class": "c"}]}, "positive_class"),
        ({"heads": [{"name": "t", "classes": ["a", "b"]}, {"name": "t", "classes": ["a", "b"]}]}, "duplicate head"),
    ],
)
def test_malformed_schemas_name_the_problem(data, fragment):
    with pytest.raises(SchemaError, match=fragment):
        LabelSchema.from_dict(data)


def test_unknown_label_names_head():
    with pytest.raises(SchemaError, match="head 'tier'"):
        LabelSchema.default().head("tier").index("medium")


def test_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="does not exist"):
        LabelSchema.from_yaml(tmp_path / "nope.yaml")


def test_head_is_frozen_and_normalises_classes():
    from pydantic import ValidationError

    h = Head(name="x", classes=["a", "b"])
    assert h.classes == ("a", "b") and h.column == "x"
    with pytest.raises(ValidationError, match="frozen"):
        h.name = "y"  # type: ignore[misc]

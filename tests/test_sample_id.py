"""The sample identity: one type, one string form, stable and parseable."""

from datetime import UTC, datetime

import pytest

from eo_etl.sample import Sample, SampleId


def test_string_form_names_cell_source_and_window_start_and_parses_back():
    sample_id = SampleId("454U_120R", "sentinel-2-l2a", datetime(2024, 6, 1, tzinfo=UTC))
    assert str(sample_id) == "454U_120R.sentinel-2-l2a.20240601"
    assert SampleId.parse(str(sample_id)) == sample_id
    sliced = SampleId("1D_2L", "s1", datetime(2024, 6, 1, 10, 15, 30, tzinfo=UTC))  # a slice that starts mid-day
    assert str(sliced) == "1D_2L.s1.20240601T101530"
    assert SampleId.parse(str(sliced)) == sliced


def test_ids_are_hashable_and_order_by_cell_then_source_then_time():
    a = SampleId("1U_1R", "a", datetime(2024, 1, 1, tzinfo=UTC))
    b = SampleId("1U_1R", "a", datetime(2024, 7, 1, tzinfo=UTC))
    assert len({a, b, SampleId.parse(str(a))}) == 2
    assert sorted([b, a]) == [a, b]


@pytest.mark.parametrize("text", ["454U_120R", "a.b.2024", "a.b.c.20240101", "../x.y.20240101x"])
def test_a_malformed_id_is_refused_by_name(text):
    with pytest.raises(ValueError, match="not a sample id"):
        SampleId.parse(text)


def test_the_row_carries_the_id_and_from_row_restores_the_window():
    start = datetime(2019, 1, 1, tzinfo=UTC)
    sample = Sample("5327D_5052L", -5327, -5052, "s2", "EPSG:32719", window_start=start).reject("no scene")
    assert sample.record()["sample_id"] == sample.row().sample_id == "5327D_5052L.s2.20190101"
    assert Sample.from_row(sample.row()).sample_id == sample.sample_id

"""The wire-to-billing value types' helpers."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from billing.calls import utc_from_epoch


@given(
    st.one_of(
        st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),  # to 2100
        st.integers(min_value=0, max_value=4_102_444_800),
    )
)
def test_a_time_from_the_epoch_is_the_one_python_gives_without_its_zone(
    seconds: float,
) -> None:
    assert utc_from_epoch(seconds) == datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def test_microseconds_are_kept() -> None:
    expected = datetime(2023, 11, 14, 22, 13, 20, 123456)  # noqa: DTZ001 - naive UTC
    assert utc_from_epoch(1_700_000_000.123456) == expected

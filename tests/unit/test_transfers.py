"""runners.transfers' pure parts: the part size of big uploads, how often a log goes up."""

from __future__ import annotations

import pytest

from runners.transfers import LOG_UPLOAD_INTERVAL_S, MAX_PARTS, PART_SIZE, log_upload_interval, part_size


@pytest.mark.parametrize(
    "size", [17 * 1024**2, MAX_PARTS * PART_SIZE, MAX_PARTS * PART_SIZE + 1, 5 * 1024**4]
)
def test_an_upload_takes_at_most_s3s_number_of_parts(size: int) -> None:
    part = part_size(size)
    assert part >= PART_SIZE
    assert part % 1024**2 == 0
    assert -(-size // part) <= MAX_PARTS


def test_a_file_within_the_parts_limit_goes_up_in_the_usual_parts() -> None:
    assert part_size(MAX_PARTS * PART_SIZE) == PART_SIZE


def test_a_big_log_goes_up_less_often() -> None:
    assert log_upload_interval(0) == LOG_UPLOAD_INTERVAL_S
    assert log_upload_interval(1024**2) == LOG_UPLOAD_INTERVAL_S
    # Uploaded whole each time: at most a few MiB a second, whatever the log's size.
    assert 100 * 1024**2 / log_upload_interval(100 * 1024**2) <= 4 * 1024**2

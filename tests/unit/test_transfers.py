"""runners.transfers' pure parts: the part size of big uploads."""

from __future__ import annotations

import pytest

from runners.transfers import MAX_PARTS, PART_SIZE, part_size


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

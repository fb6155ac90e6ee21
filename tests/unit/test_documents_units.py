"""Sizes, durations and CPU amounts: what each parser accepts, and what it refuses."""

from __future__ import annotations

import pytest

from daemon.documents.units import parse_cpu, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("4Gi", 4294967296),
        ("512Mi", 536870912),
        ("1Ki", 1024),
        ("1k", 1000),
        ("1K", 1000),
        ("16G", 16_000_000_000),
        ("100M", 100_000_000),
        ("1Ti", 1024**4),
        ("1Ei", 1024**6),
        ("1.5Gi", 1610612736),
        ("0.5Ki", 512),
        (" 2Mi ", 2 * 1024**2),
        ("100", 100),
        (100, 100),
        (0, 0),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["4Gb", "4ki", "4 Gi", "Gi", "", "-1", "1e3", "4GiB", -1, "1.5", "0.1", "1.0000001Ki"]
)
def test_parse_size_refuses(value: int | str) -> None:
    with pytest.raises(ValueError, match=r"^bad size .* \(use e\.g\. 512Mi, 4Gi\)$"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("1m30s250ms", 90.25),
        ("0s", 0.0),
        (" 5m ", 300.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: int | float | str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["30", "1 h", "1h 30m", "1w", "m", "", "-5s", "5s-", -1, -0.5])
def test_parse_duration_refuses(value: int | float | str) -> None:
    with pytest.raises(ValueError, match=r"^bad duration .* \(use e\.g\. 30s, 5m, 1h30m\)$"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "cores"),
    [("500m", 0.5), ("1500m", 1.5), ("1m", 0.001), ("2", 2.0), ("0.25", 0.25), (2, 2.0), (0.5, 0.5)],
)
def test_parse_cpu(value: int | float | str, cores: float) -> None:
    assert parse_cpu(value) == cores


@pytest.mark.parametrize("value", [0, 0.0, -1, "0", "0m", "-1", "m", "500x", "1.5.0", ""])
def test_parse_cpu_refuses_zero_negative_and_junk(value: int | float | str) -> None:
    with pytest.raises(
        ValueError, match=r"^bad cpu .* \(use a number of cores above 0, e\.g\. 2, 0\.5 or 500m\)$"
    ):
        parse_cpu(value)

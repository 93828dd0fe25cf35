"""Reading back the rich tables a command prints, and comparing their rounded numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PrintedTable:
    title: str
    headers: list[str]
    rows: list[list[str]]

    def column(self, header: str) -> int:
        return self.headers.index(header)

    def row(self, first_cell: str) -> list[str]:
        matches = [r for r in self.rows if r[0] == first_cell]
        assert len(matches) == 1, f"{len(matches)} rows named {first_cell!r} in {self.title!r}: {self.rows}"
        return matches[0]


def _cells(line: str, bar: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(bar).split(bar)]


def parse_tables(text: str) -> list[PrintedTable]:
    """Every box-drawn table in ``text``: its title (the line above it), its headers (a header of
    several lines joined with spaces) and its body rows (section lines skipped), cell by cell."""
    lines = text.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("┏"):
            i += 1
            continue
        title = lines[i - 1].strip() if i else ""
        i += 1
        header_lines = []
        while lines[i].lstrip().startswith("┃"):
            header_lines.append(_cells(lines[i], "┃"))
            i += 1
        assert lines[i].lstrip().startswith("┡"), lines[i]
        i += 1
        rows = []
        while not lines[i].lstrip().startswith("└"):
            if lines[i].lstrip().startswith("│"):
                rows.append(_cells(lines[i], "│"))
            i += 1
        headers = [" ".join(p for p in parts if p) for parts in zip(*header_lines, strict=True)]
        tables.append(PrintedTable(title, headers, rows))
        i += 1
    return tables


def assert_printed(cell: str, value: float | None, *, digits: int = 6, none: str = "–") -> None:
    """``cell`` is ``value`` printed with ``digits`` significant digits (``none`` for no value),
    allowing for a value that lies on a rounding boundary."""
    if value is None:
        assert cell == none, f"{cell!r} printed for no value"
        return
    assert cell != none, f"{cell!r} printed for {value!r}"
    printed = float(cell.replace(",", ""))
    if value == 0.0:
        assert printed == 0.0, f"{cell!r} != {value!r}"
        return
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - (digits - 1))
    assert abs(printed - value) <= 0.5 * unit * (1 + 1e-9), f"{cell!r} is not {value!r} to {digits} digits"


def assert_fixed(cell: str, value: float | None, decimals: int, *, none: str = "n/a") -> None:
    """``cell`` is ``value`` printed with ``decimals`` decimals (``none`` for no value)."""
    if value is None:
        assert cell == none, f"{cell!r} printed for no value"
        return
    assert abs(float(cell) - value) <= 0.5 * 10.0**-decimals * (1 + 1e-9), f"{cell!r} is not {value!r}"


def assert_percent(cell: str, value: float | None, decimals: int = 2, *, none: str = "–") -> None:
    """``cell`` is the share ``value`` printed as a percentage with ``decimals`` decimals."""
    if value is None:
        assert cell == none, f"{cell!r} printed for no value"
        return
    assert cell.endswith("%"), cell
    assert_fixed(cell[:-1], 100.0 * value, decimals)


def assert_count(cell: str, value: int) -> None:
    """``cell`` is the integer ``value``, with or without thousands separators."""
    assert int(cell.replace(",", "")) == value, f"{cell!r} != {value}"

"""README.md's settings table, generated from the declarations in service/config.py.

    python -m harness.readme           print the table
    python -m harness.readme --write   replace the table in README.md with it

tests/test_config.py fails while README.md's table differs from this one by a single character.
"""

from __future__ import annotations

import sys
from pathlib import Path

from service.config import variables

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_HEAD = "| variable | default | meaning |\n|---|---|---|\n"


def shown_default(default: object) -> str:
    """A default as the README shows it: `unset` for None, numbers without a needless `.0`."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def settings_table() -> str:
    """Every environment variable: its name, its default and its one line of help."""
    rows = [
        f"| `{name}` | {shown_default(declared.default)} | {_cell(declared.metadata['doc'])} |\n"
        for name, declared in variables()
    ]
    return TABLE_HEAD + "".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the cell


def readme_table(text: str) -> str:
    """The settings table as README.md has it: its head and every row up to the first non-row."""
    start = text.index(TABLE_HEAD)
    lines = text[start:].splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return "".join(lines[:end])


def main(argv: list[str]) -> int:
    table = settings_table()
    if argv == ["--write"]:
        text = README.read_text()
        README.write_text(text.replace(readme_table(text), table, 1))
        return 0
    if argv:
        print("usage: python -m harness.readme [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

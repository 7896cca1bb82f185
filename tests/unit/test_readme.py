"""The README's settings table names every setting, so none is undocumented."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme():
    text = README.read_text()
    missing = [
        f"UAIT_{name.upper()}"
        for name in Settings.model_fields
        if f"`UAIT_{name.upper()}`" not in text
    ]
    assert not missing, f"add to the README's settings table: {missing}"

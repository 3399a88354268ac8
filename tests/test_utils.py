"""maskpot.utils helpers used by the example and benchmark scripts."""

from pathlib import Path

from maskpot.utils import replace_marked_block


def test_replace_marked_block(tmp_path: Path) -> None:
    f = tmp_path / "README.md"
    f.write_text("intro\n<!-- t -->\nold table\n<!-- /t -->\nafter\n")
    assert replace_marked_block(f, "<!-- t -->", "<!-- /t -->", "| new |\n")
    assert f.read_text() == "intro\n<!-- t -->\n| new |\n<!-- /t -->\nafter\n"
    g = tmp_path / "other.md"
    g.write_text("no markers\n")
    assert not replace_marked_block(g, "<!-- t -->", "<!-- /t -->", "x")
    assert g.read_text() == "no markers\n"

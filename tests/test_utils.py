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


def test_upsert_marked_block_appends_once_then_replaces(tmp_path: Path) -> None:
    from maskpot.utils import upsert_marked_block

    f = tmp_path / "sub" / "RESULTS.md"  # neither the file nor its folder exists yet
    upsert_marked_block(f, "<!-- b -->", "<!-- /b -->", "first\n")
    upsert_marked_block(f, "<!-- c -->", "<!-- /c -->", "other")
    upsert_marked_block(f, "<!-- b -->", "<!-- /b -->", "second")
    text = f.read_text()
    assert text.count("<!-- b -->") == 1 and "first" not in text
    assert text.index("second") < text.index("other")  # replaced in place, not re-appended

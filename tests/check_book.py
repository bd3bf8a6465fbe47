"""Checks of a BUILT book, run by `make notebooks` right after the smoke build (not part of the unit run:
the file name keeps pytest's default collection away). They read the HTML as a reader's browser would.

$PEMNB_BUILT_BOOK names the html folder (default: _build/smoke/_build/html).
"""
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("PEMNB_BUILT_BOOK", ROOT / "_build" / "smoke" / "_build" / "html"))
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FIGURE_CALL = re.compile(r"^\s*fig\w*\s*=", re.M)   # the book's convention: a figure is assigned to fig…


def page(nb: Path) -> str:
    f = HTML / "notebooks" / f"{nb.stem}.html"
    if not f.exists():
        pytest.fail(f"{f} was not built")
    return f.read_text(encoding="utf-8")


def article(html: str) -> str:
    """The page's content, without the theme's navigation and logo."""
    m = re.search(r'<article class="bd-article"[^>]*>(.*?)</article>', html, re.S)
    return m.group(1) if m else html


def code_cells(nb: Path) -> list[dict]:
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_reaches_the_page(nb):
    drawn = sum(len(FIGURE_CALL.findall("".join(c["source"]))) for c in code_cells(nb))
    images = len(re.findall(r"<img\b", article(page(nb))))
    assert images >= drawn, f"{nb.stem}: the notebook draws {drawn} figures, its page shows {images} images"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_captioned_figures_carry_their_captions(nb):
    captions = [c["metadata"]["mystnb"]["figure"]["caption"] for c in code_cells(nb)
                if "figure" in c.get("metadata", {}).get("mystnb", {})]
    body = article(page(nb))
    assert len(re.findall(r"<figcaption", body)) >= len(captions)
    for text in captions:
        assert text.split(" ")[0] in body


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_pages_carry_no_build_noise(nb):
    body = article(page(nb))
    for path in {str(ROOT), str(Path.home()), "/.cache/pemnb"}:
        assert path not in body, f"{nb.stem} shows a path of the build machine: {path}"
    assert "it/s]" not in body and "s/it]" not in body, f"{nb.stem} shows a frozen progress bar"
    assert "Warning:" not in body, f"{nb.stem} shows a library warning"
    assert not re.search(r"\.\.\.</td>", body), f"{nb.stem} has a truncated table cell"
    assert not re.search(r"<td>-?\d+\.\d{6}</td>", body), f"{nb.stem} prints a raw float"


def test_math_renders_offline():
    pages = [HTML / "book" / "intro.html", *(HTML / "notebooks" / f"{nb.stem}.html" for nb in CHAPTERS)]
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()
    for f in pages:
        scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', f.read_text(encoding="utf-8"), re.I)
        assert scripts, f"{f.name} loads no math renderer"
        assert all(not s.startswith(("http:", "https:", "//")) and "_static/mathjax/" in s for s in scripts), \
            f"{f.name} loads its math renderer from elsewhere: {scripts}"


# ---------------------------------------------------------------- a book a teacher can use (issue 17)
@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_ends_with_exercises_whose_answers_are_folded(nb):
    body = article(page(nb))
    assert 'id="exercises"' in body, f"{nb.stem} has no Exercises section"
    after = body[body.index('id="exercises"'):]
    folded = len(re.findall(r'class="cell tag_hide-cell', after))
    assert folded >= 3, f"{nb.stem}: {folded} folded worked answers after its Exercises heading, expected 3 or more"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_link_the_glossary_and_the_bibliography(nb):
    body = article(page(nb))
    assert "glossary.html#term-" in body, f"{nb.stem} links no glossary term"
    assert "references.html#id" in body, f"{nb.stem} cites nothing from the bibliography"


def test_intro_shows_the_operator_diagram_and_the_teaching_pages_exist():
    intro = article((HTML / "book" / "intro.html").read_text(encoding="utf-8"))
    assert re.search(r"<img\b", intro), "the introduction shows no operator diagram"
    for name in ("glossary", "references", "course"):
        assert (HTML / "book" / f"{name}.html").exists(), f"book/{name} was not built"
    refs = article((HTML / "book" / "references.html").read_text(encoding="utf-8"))
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    entries = len(re.findall(r"^@\w+\{", bib, re.M))
    assert refs.count('role="doc-biblioentry"') == entries, "the references page does not list every bibliography entry"

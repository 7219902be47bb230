"""HTML, PDF and DOCX to Markdown-shaped text, so one chunker handles every format: headings become `#` lines
(the chunker's sections), tables become Markdown tables (one paragraph, kept together), the rest paragraphs.

Each function returns (title or None, text) or raises ParseError with a reason a tenant admin can act on.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

from app.knowledge.parse import ParseError
from app.knowledge.units import is_question

# Elements that are page furniture or code, never knowledge.
_HTML_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "template",
              "iframe", "button", "select")
_HTML_BLOCKS = ("p", "li", "dd", "dt", "blockquote", "pre", "figcaption", "caption", "address")
_BREAK = "\u2028"  # stands for <br> while whitespace is collapsed
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Elements that hold blocks: a container with none of them inside is one paragraph of text.
_HTML_CONTAINERS = (*_HTML_BLOCKS, *_HTML_HEADINGS, "table", "dl", "details", "summary", "div", "section",
                    "article", "ul", "ol", "figure", "main")
# The classes help-centre themes give an FAQ item's question and its answer panel (Bootstrap, Zendesk, WordPress
# accordions and FAQ plugins): "faq-question", "faq__question", "accordion-button", "toggle-title", "answer"...
_QUESTION_CLASS = re.compile(r"(?:^|[\s_-])(?:question|faq-q|faq_q|accordion-(?:button|header|title|toggle|trigger)"
                             r"|toggle-(?:title|heading)|collapsible-(?:header|title))(?:$|[\s_-])", re.IGNORECASE)
_ANSWER_CLASS = re.compile(r"(?:^|[\s_-])(?:answer|faq-a|faq_a|accordion-(?:body|content|panel|collapse)"
                           r"|toggle-(?:content|body)|collapsible-(?:body|content)|collapse|panel)(?:$|[\s_-])",
                           re.IGNORECASE)
_DOCX_MAX_EXPANSION = 20  # a DOCX whose parts unpack to more than this many times the file size is refused


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(rows: list[list[str]]) -> str:
    rows = [[_cell(c) for c in row] for row in rows if any(c.strip() for c in row)]
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


# -- HTML --------------------------------------------------------------------------------------------------


def html_to_markdown(text: str) -> tuple[str | None, str]:
    """The page as Markdown-shaped text. FAQ markup becomes what a question heading is, so the chunker makes the
    same question/answer units of it as of any other format (app/knowledge/units.py): a definition list's terms
    (`dt`), an accordion's toggles (`details > summary`, or elements with the usual classes: "faq-question",
    "accordion-button", "toggle-title"...) and the questions of schema.org `FAQPage` JSON-LD become headings
    one level under the current one, their answers the text below them."""
    from bs4 import BeautifulSoup, Tag

    soup = BeautifulSoup(text, "html.parser")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else None
    jsonld = faq_jsonld(soup)
    for br in soup.find_all("br"):
        br.replace_with(_BREAK)  # a line break inside a paragraph stays one (an address, a list of steps)
    for tag in soup.find_all("button"):
        if _is_toggle(tag):
            tag.unwrap()  # an accordion's button holds its question: keep the text, drop the control
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(True, attrs={"role": ["navigation", "banner", "contentinfo"]}):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    blocks: list[str] = []
    # The headings open so far (level, title): an FAQ item goes one level under the innermost one that is not
    # itself a question, and the text after the item goes back under that heading.
    stack: list[tuple[int, str]] = []

    def heading(level: int, title: str) -> None:
        blocks.append("#" * level + " " + title)

    def parent() -> tuple[int, str]:
        return next(((lvl, t) for lvl, t in reversed(stack) if not is_question(t)), (1, ""))

    def item(question: str, answer: list[Any]) -> None:
        """One FAQ item under the current topic heading; the text after it goes back to that heading."""
        if not question:
            return
        level, title = parent()
        heading(min(6, level + 1), question)
        for part in answer:
            if part.find(_HTML_CONTAINERS) is None:
                text = _text(part)
                if text:
                    blocks.append(text)
            else:
                walk(part)
        if title:
            heading(level, title)  # reopened only if more text follows (an empty section is dropped)

    def walk(node: Any) -> None:
        for child in node.children:
            if not isinstance(child, Tag):
                text = " ".join(str(child).split())
                if text and node is body:
                    blocks.append(text)
                continue
            name = child.name or ""
            if len(name) == 2 and name[0] == "h" and name[1] in "123456":
                title = " ".join(child.get_text(" ").split())
                if title:
                    level = int(name[1])
                    stack[:] = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, title)]
                    heading(level, title)
            elif name == "table":
                rows = [[c.get_text(" ") for c in tr.find_all(["th", "td"])] for tr in child.find_all("tr")]
                table = markdown_table(rows)
                if table:
                    blocks.append(table)
            elif name == "dl":
                for term in child.find_all("dt"):
                    if term.find_parent("dl") is not child:
                        continue  # a nested list's term: part of an answer, walked with it
                    answers = []
                    for sibling in term.find_next_siblings(["dt", "dd"]):
                        if sibling.name == "dt":
                            break
                        answers.append(sibling)
                    item(_text(term), answers)
            elif name == "details":
                summary = child.find("summary")
                if summary is None:
                    walk(child)
                    continue
                question = _text(summary)
                summary.decompose()
                item(question, [child])
            elif _QUESTION_CLASS.search(_classes(child)) and _text(child) and child.find(_HTML_CONTAINERS) is None:
                question = _text(child)
                answer = child.find_next_sibling(True)
                if answer is not None and _ANSWER_CLASS.search(_classes(answer)):
                    answer.extract()  # walked here, under its question, not again as the next sibling
                    item(question, [answer])
                else:
                    item(question, [])
            elif name in _HTML_BLOCKS:
                text = _text(child)
                if text:
                    blocks.append(("- " if name == "li" else "") + text)
            elif child.find(_HTML_CONTAINERS) is None:
                text = _text(child)  # a leaf container (a div of plain text, an accordion's answer panel)
                if text:
                    blocks.append(text)
            else:
                walk(child)

    walk(body)
    shown = {_norm(b.lstrip("#")) for b in blocks if b.startswith("#")}
    for question, answer in jsonld:  # a question the page also shows is kept once: as the page shows it
        if _norm(question) not in shown:
            heading(min(6, parent()[0] + 1), question)
            blocks.append(answer)
    content = "\n\n".join(blocks).strip()
    if not content:
        raise ParseError("no readable text in this HTML page (only scripts, styles or navigation?)")
    return title, content


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _text(tag: Any) -> str:
    return _lines(tag.get_text(" "))


def _lines(text: str) -> str:
    """Whitespace collapsed, `<br>` kept as a line break."""
    return "\n".join(" ".join(line.split()) for line in text.split(_BREAK)).strip()


def _classes(tag: Any) -> str:
    value = tag.get("class") or []
    return " ".join(value) if isinstance(value, list) else str(value)


def _is_toggle(tag: Any) -> bool:
    """A button that opens an accordion item: it holds the item's question."""
    parent = tag.parent
    return bool(
        tag.get("aria-controls") or tag.get("aria-expanded") is not None
        or _QUESTION_CLASS.search(_classes(tag))
        or (parent is not None and (parent.name in ("summary", "dt", *_HTML_HEADINGS)
                                    or _QUESTION_CLASS.search(_classes(parent))))
    )


def faq_jsonld(soup: Any) -> list[tuple[str, str]]:
    """(question, answer) pairs of the page's schema.org FAQPage JSON-LD (in a list, an @graph, or alone);
    a script that is not valid JSON is skipped, as browsers and search engines do."""
    from bs4 import BeautifulSoup

    pairs: list[tuple[str, str]] = []

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for x in node:
                visit(x)
        elif isinstance(node, dict):
            types = node.get("@type")
            types = types if isinstance(types, list) else [types]
            if "FAQPage" in types:
                entities = node.get("mainEntity") or []
                for entity in entities if isinstance(entities, list) else [entities]:
                    if not isinstance(entity, dict):
                        continue
                    answer = entity.get("acceptedAnswer") or entity.get("suggestedAnswer") or {}
                    answer = answer[0] if isinstance(answer, list) and answer else answer
                    question = entity.get("name") or entity.get("text")
                    body = answer.get("text") if isinstance(answer, dict) else None
                    if isinstance(question, str) and isinstance(body, str):
                        q = " ".join(question.split())
                        a = " ".join(BeautifulSoup(body, "html.parser").get_text(" ").split())
                        a = re.sub(r"\s+([.,;:!?])", r"\1", a)  # "the <b>EU</b>." reads "the EU."
                        if q and a:
                            pairs.append((q, a))
            else:
                visit(node.get("@graph"))

    for script in soup.find_all("script", attrs={"type": "application/ld+json"}):
        try:
            visit(json.loads(script.string or script.get_text() or "null"))
        except (json.JSONDecodeError, TypeError):
            continue
    return pairs


# -- PDF ---------------------------------------------------------------------------------------------------


def pdf_to_text(data: bytes, max_pages: int) -> tuple[str | None, str]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, LimitReachedError, PdfReadError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("encrypted PDF: remove the password and upload again")
        pages = len(reader.pages)
        if pages > max_pages:
            raise ParseError(f"PDF has {pages} pages; the limit is {max_pages} (MAX_PDF_PAGES): split it")
        texts = [(page.extract_text() or "").strip() for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or None
    except ParseError:
        raise
    except FileNotDecryptedError as exc:
        raise ParseError("encrypted PDF: remove the password and upload again") from exc
    except LimitReachedError as exc:
        # pypdf stops unpacking a stream past its limits (75 MB by default), e.g. a decompression bomb.
        raise ParseError(f"PDF refused: a part of it unpacks past the reader's limits (a decompression bomb?): "
                         f"{str(exc)[:120]}") from exc
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise ParseError(f"corrupt PDF, cannot be read ({exc.__class__.__name__}: {str(exc)[:120]}); "
                         "export it again and upload the new file") from exc
    content = "\n\n".join(t for t in texts if t)
    if not content.strip():
        raise ParseError("PDF has no text layer (a scan?): run it through OCR and upload the result")
    return (str(meta_title).strip() or None) if meta_title else None, content


# -- DOCX --------------------------------------------------------------------------------------------------


def _check_docx_zip(data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            expanded = sum(m.file_size for m in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ParseError("corrupt DOCX (not a valid Word file): save it again from Word and upload it") from exc
    if expanded > max(len(data), 1) * _DOCX_MAX_EXPANSION and expanded > 50 * 1024 * 1024:
        raise ParseError(f"DOCX unpacks to {expanded} bytes (a zip bomb?); refused")


def _docx_heading_level(style_name: str) -> int | None:
    name = style_name.lower()
    if name == "title":
        return 1
    if name.startswith("heading"):
        level = name.removeprefix("heading").strip()
        return int(level) if level.isdigit() and 1 <= int(level) <= 6 else None
    return None


def docx_to_markdown(data: bytes) -> tuple[str | None, str]:
    from docx import Document as load_docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    _check_docx_zip(data)
    try:
        document = load_docx(io.BytesIO(data))
        items = list(document.iter_inner_content())
        core_title = document.core_properties.title or None
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        raise ParseError("corrupt DOCX (not a valid Word file): save it again from Word and upload it") from exc
    except Exception as exc:  # lxml raises its own XMLSyntaxError for broken XML parts
        raise ParseError(f"corrupt DOCX ({exc.__class__.__name__}): save it again from Word and upload it") from exc
    blocks: list[str] = []
    first_heading: str | None = None
    for item in items:
        if isinstance(item, Paragraph):
            # A line break inside a paragraph (Shift+Enter) stays one; other whitespace collapses.
            text = "\n".join(" ".join(line.split()) for line in item.text.split("\n")).strip()
            if not text:
                continue
            level = _docx_heading_level(item.style.name if item.style is not None else "")
            if level:
                text = " ".join(text.split())  # a heading is one line
                first_heading = first_heading or text
                blocks.append("#" * level + " " + text)
            elif (item.style is not None and "list" in item.style.name.lower()):
                blocks.append("- " + text)
            else:
                blocks.append(text)
        elif isinstance(item, Table):
            table = markdown_table([[cell.text for cell in row.cells] for row in item.rows])
            if table:
                blocks.append(table)
    content = "\n\n".join(blocks).strip()
    if not content:
        raise ParseError("DOCX has no text")
    return core_title or first_heading, content

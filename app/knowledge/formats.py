"""HTML, PDF and DOCX to Markdown-shaped text, so one chunker handles every format: headings become `#` lines
(the chunker's sections), tables become Markdown tables (one paragraph, kept together), the rest paragraphs.

Each function returns (title or None, text) or raises ParseError with a reason a tenant admin can act on.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from app.knowledge.parse import ParseError

# Elements that are page furniture or code, never knowledge.
_HTML_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "template",
              "iframe", "button", "select")
_HTML_BLOCKS = ("p", "li", "dd", "dt", "blockquote", "pre", "figcaption", "caption", "address")
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
    from bs4 import BeautifulSoup, Tag

    soup = BeautifulSoup(text, "html.parser")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else None
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(True, attrs={"role": ["navigation", "banner", "contentinfo"]}):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    blocks: list[str] = []

    def walk(node: Any) -> None:
        for child in node.children:
            if not isinstance(child, Tag):
                text = " ".join(str(child).split())
                if text and node is body:
                    blocks.append(text)
                continue
            name = child.name or ""
            if len(name) == 2 and name[0] == "h" and name[1] in "123456":
                heading = " ".join(child.get_text(" ").split())
                if heading:
                    blocks.append("#" * int(name[1]) + " " + heading)
            elif name == "table":
                rows = [[c.get_text(" ") for c in tr.find_all(["th", "td"])] for tr in child.find_all("tr")]
                table = markdown_table(rows)
                if table:
                    blocks.append(table)
            elif name in _HTML_BLOCKS:
                text = " ".join(child.get_text(" ").split())
                if text:
                    blocks.append(("- " if name == "li" else "") + text)
            else:
                walk(child)

    walk(body)
    content = "\n\n".join(blocks).strip()
    if not content:
        raise ParseError("no readable text in this HTML page (only scripts, styles or navigation?)")
    return title, content


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
            text = " ".join(item.text.split())
            if not text:
                continue
            level = _docx_heading_level(item.style.name if item.style is not None else "")
            if level:
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

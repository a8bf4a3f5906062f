"""HTML to markdown-ish text that keeps the structure a model should learn, and main-content extraction.

``html_to_text`` walks a Lexbor tree (selectolax) and writes paragraphs as blank-line separated
blocks, headings as ``# ``, lists as ``- item`` / ``1. item`` (nested by indentation), ``<pre>`` as
``` fences with the language of ``class="language-x"``, inline ``<code>`` in backticks, data tables
as pipe tables, ``<s>``/``<del>`` as ``~~struck~~``; links keep their text, scripts, styles and
comments go, entities are decoded by the parser.

``main_content`` is for whole web pages: it first drops page furniture (``nav``, ``header``,
``footer``, ``aside``, forms, menus, cookie banners and anything whose class/id says "sidebar",
"share", "related", "comment", ...), then scores paragraphs Readability-style (text length and
commas, credited to their ancestors, discounted by link density), keeps the best-scoring container
plus siblings that look like its continuation, removes link-dense or furniture-like blocks inside
it and renders what is left with ``html_to_text``'s writer.

Both run per document in Python: the cleaned stage calls them only on the rare segments a
vectorized mask has already flagged as HTML.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.entities import name2codepoint

import polars as pl
from selectolax.lexbor import LexborHTMLParser, LexborNode

# Elements whose content is never text for a model.
_DROP = frozenset(
    {"script", "style", "noscript", "template", "head", "iframe", "object", "embed", "svg", "canvas", "map"}
)
# Page furniture, dropped (with content) in main-content mode only.
_FURNITURE = frozenset(
    {"nav", "header", "footer", "aside", "menu", "dialog", "button", "select", "input", "textarea"}
    | {"label", "figcaption", "fieldset", "time", "address"}
)
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
# Elements that start a new block (everything else is inline).
_BLOCK = frozenset(
    {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog"}
    | {"dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup"}
    | {"hr", "html", "li", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody"}
    | {"td", "tfoot", "th", "thead", "tr", "ul", "noscript", "legend", "option"}
    | set(_HEADINGS)
)
_PAGE = re.compile(r"(?i)<(?:html|body)[\s>]")
_STRUCK = frozenset({"s", "strike", "del"})
_WS = re.compile(r"[ \t\n\r\f\v]+")
_LANGUAGE = re.compile(r"(?:^|\s)(?:lang(?:uage)?-|highlight-source-|brush:\s*)([\w+#.-]+)")

# Special tokens the parser would take for tags (``<start_of_turn>``, ``<<SYS>>``): escaped before
# parsing so that they come out as literal text, which the special-token step then removes and counts.
_TAG_LIKE_TOKENS = re.compile(
    r"<(?=<?/?SYS>>)|(?<=SYS)>>|<(?=/?(?:start_of_turn|end_of_turn|bos|eos|unk|pad|fim_prefix|fim_middle"
    r"|fim_suffix|fim_pad)>)"
)


def _escape_tag_like_tokens(markup: str) -> str:
    return _TAG_LIKE_TOKENS.sub(lambda m: "&lt;" if m.group() == "<" else "&gt;&gt;", markup)


def _children(node: LexborNode) -> Iterator[LexborNode]:
    child = node.child
    while child is not None:
        yield child
        child = child.next


def _indent(text: str, first: str, rest: str) -> str:
    lines = text.split("\n")
    return "\n".join([first + lines[0], *[(rest + line if line else line) for line in lines[1:]]])


class _Writer:
    """Renders a subtree as blocks of text; ``skip`` holds ``mem_id`` of elements to leave out."""

    def __init__(self, drop: frozenset[str] = _DROP, skip: frozenset[int] = frozenset()) -> None:
        self.drop = drop
        self.skip = skip

    def _ignored(self, node: LexborNode) -> bool:
        return node.tag in self.drop or node.mem_id in self.skip

    def render(self, node: LexborNode) -> str:
        return "\n\n".join(b for b in self.blocks(node) if b)

    def blocks(self, node: LexborNode) -> list[str]:
        out: list[str] = []
        run: list[str] = []
        for child in _children(node):
            tag = child.tag
            if tag == "-text":
                run.append(_WS.sub(" ", child.text_content or ""))
            elif tag == "br":
                run.append("\n")
            elif tag in ("-comment", "-doctype") or self._ignored(child):
                continue
            elif tag in _BLOCK:
                self._flush(run, out)
                out.extend(self.block(child))
            else:
                inline = self.inline(child)
                if inline is None:  # an inline element wrapping blocks (<a><div>..</div></a>)
                    self._flush(run, out)
                    out.extend(self.blocks(child))
                else:
                    run.append(inline)
        self._flush(run, out)
        return out

    @staticmethod
    def _flush(run: list[str], out: list[str]) -> None:
        if run:
            text = re.sub(r" *\n *", "\n", re.sub(r" {2,}", " ", "".join(run))).strip()
            if text:
                out.append(text)
            run.clear()

    def inline(self, node: LexborNode) -> str | None:
        """Inline markup as one string, or None when a block element is inside."""
        parts: list[str] = []
        for child in _children(node):
            tag = child.tag
            if tag == "-text":
                parts.append(_WS.sub(" ", child.text_content or ""))
            elif tag == "br":
                parts.append("\n")
            elif tag in ("-comment", "-doctype") or self._ignored(child):
                continue
            elif tag in _BLOCK:
                return None
            else:
                inner = self.inline(child)
                if inner is None:
                    return None
                parts.append(inner)
        text = "".join(parts)
        tag = node.tag
        if tag == "code" or tag == "kbd" or tag == "tt":
            code = text.strip()
            if not code:
                return text
            fence = "``" if "`" in code else "`"
            pad = " " if fence == "``" else ""
            return f"{fence}{pad}{code}{pad}{fence}"
        if tag in _STRUCK and text.strip():
            return f"~~{text.strip()}~~"
        return text

    def block(self, node: LexborNode) -> list[str]:
        tag = node.tag
        if tag in _HEADINGS:
            text = self.inline(node)
            text = _WS.sub(" ", text if text is not None else " ".join(self.blocks(node))).strip()
            return [f"{'#' * _HEADINGS[tag]} {text}"] if text else []
        if tag == "pre":
            return self._pre(node)
        if tag in ("ul", "ol", "menu", "dir"):
            text = self._list(node)
            return [text] if text else []
        if tag == "blockquote":
            inner = self.render(node)
            return ["\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))] if inner else []
        if tag == "table":
            return self._table(node)
        if tag == "hr":
            return []
        return self.blocks(node)

    def _pre(self, node: LexborNode) -> list[str]:
        parts: list[str] = []
        language = ""

        def collect(n: LexborNode) -> None:
            nonlocal language
            for child in _children(n):
                if child.tag == "-text":
                    parts.append(child.text_content or "")
                elif child.tag == "br":
                    parts.append("\n")
                elif child.tag not in ("-comment",) and not self._ignored(child):
                    if child.tag == "code" and not language:
                        language = _language(child)
                    collect(child)

        collect(node)
        language = _language(node) or language
        code = "".join(parts).replace("\r\n", "\n").strip("\n")
        if not code.strip():
            return []
        return [f"```{language}\n{code.rstrip()}\n```"]

    def _list(self, node: LexborNode) -> str:
        ordered = node.tag == "ol"
        start = node.attributes.get("start") or "1"
        number = int(start) if start.strip().lstrip("-").isdigit() else 1
        items: list[str] = []
        for child in _children(node):
            tag = child.tag
            if tag == "-text" or tag == "-comment" or self._ignored(child):
                continue
            if tag in ("ul", "ol"):  # a list directly inside a list: nested under the previous item
                nested = self._list(child)
                if nested:
                    items.append(_indent(nested, "  ", "  "))
                continue
            body = "\n".join(b for b in self.blocks(child) if b) if tag == "li" else self.render(child)
            if not body:
                continue
            if tag == "li":
                marker = f"{number}. " if ordered else "- "
                number += 1
                items.append(_indent(body, marker, " " * len(marker)))
            else:
                items.append(body)
        return "\n".join(items)

    def _table(self, node: LexborNode) -> list[str]:
        rows = [row for row in _rows(node) if not self._ignored(row)]
        cells = [
            [c for c in _children(row) if c.tag in ("td", "th") and not self._ignored(c)] for row in rows
        ]
        cells = [row for row in cells if row]
        texts: list[list[str]] = []
        for row in cells:
            line: list[str] = []
            for cell in row:
                inline = self.inline(cell)
                if inline is None:  # a layout table (blocks in cells): its cells are just blocks
                    return [b for row_ in cells for cell_ in row_ for b in self.blocks(cell_) if b]
                line.append(_WS.sub(" ", inline).strip().replace("|", "\\|"))
            texts.append(line)
        width = max((len(row) for row in texts), default=0)
        if len(texts) < 2 or width < 2:
            return [" ".join(t for t in row if t) for row in texts if any(row)]
        texts = [row + [""] * (width - len(row)) for row in texts]
        lines = [f"| {' | '.join(row)} |" for row in texts]
        lines.insert(1, "|" + " --- |" * width)
        return ["\n".join(lines)]


def _rows(table: LexborNode) -> Iterator[LexborNode]:
    """The table's own rows (not those of nested tables), in document order."""
    for child in _children(table):
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            yield from (row for row in _children(child) if row.tag == "tr")


def _language(node: LexborNode) -> str:
    match = _LANGUAGE.search(node.attributes.get("class") or "")
    return match.group(1) if match else ""


def _parse(markup: str) -> LexborHTMLParser:
    return LexborHTMLParser(_escape_tag_like_tokens(markup))


def html_to_text(markup: str) -> str:
    """An HTML fragment or page as structured text (see the module docstring); the whole document."""
    tree = _parse(markup)
    root = tree.body if tree.body is not None else tree.root
    return _Writer().render(root) if root is not None else ""


# --- main-content extraction -----------------------------------------------------------------------

_UNLIKELY = re.compile(
    r"-ad-|^ad-|\bads?\b|advert|agegate|ai2html|author|banner|breadcrumb|byline|combx|comment|communit|consent"
    r"|cookie|cover-wrap|disqus|donat|extra|footer|gdpr|header|hidden|legends|login|masthead|menu|meta|modal"
    r"|most-?(?:read|popular)|nav|newsletter|outbrain|pager|pagination|popup|promo|recirc|recommend"
    r"|related|remark|replies|rss|share|shoutbox|sidebar|signup|skip|skyscraper|social|sponsor|subscri"
    r"|supplemental|tags?\b|taboola|tool|trending|widget|yom-remote",
    re.IGNORECASE,
)
_MAYBE = re.compile(r"and|article|body|column|content|main|shadow|story|entry|post|text", re.IGNORECASE)
_POSITIVE = re.compile(
    r"article|body|content|entry|hentry|h-entry|main|page|pagination|post|text|blog|story", re.IGNORECASE
)
_NEGATIVE = re.compile(
    r"-ad-|hidden|^hid$| hid$| hid |^hid |banner|combx|comment|com-|contact|foot|footer|footnote|gdpr"
    r"|masthead|media|meta|outbrain|promo|related|scroll|share|shoutbox|sidebar|skyscraper|sponsor"
    r"|shopping|tags|tool|widget|caption|credit|newsletter|subscribe|social|recommend",
    re.IGNORECASE,
)
_UNLIKELY_ROLES = frozenset(
    {"menu", "menubar", "complementary", "navigation", "alert", "alertdialog", "dialog", "banner"}
    | {"contentinfo", "search", "form"}
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_PARAGRAPHS = frozenset({"p", "pre", "td", "blockquote", "li", "dd"} | set(_HEADINGS))
_TAG_SCORE = {
    "div": 5,
    "article": 10,
    "main": 5,
    "section": 3,
    "pre": 3,
    "td": 3,
    "blockquote": 3,
    "address": -3,
    "ol": -3,
    "ul": -3,
    "dl": -3,
    "dd": -3,
    "dt": -3,
    "li": -3,
    "form": -3,
    "th": -5,
    **{h: -5 for h in _HEADINGS},
}


def _hints(node: LexborNode) -> str:
    attrs = node.attributes
    return f"{attrs.get('class') or ''} {attrs.get('id') or ''}"


def _class_weight(node: LexborNode) -> int:
    hints = _hints(node)
    weight = 0
    if _NEGATIVE.search(hints):
        weight -= 25
    if _POSITIVE.search(hints):
        weight += 25
    return weight


@dataclass(frozen=True)
class _Pass:
    """How aggressive one extraction attempt is; later attempts relax it (as Readability does)."""

    strip_unlikely: bool = True
    weigh_classes: bool = True
    clean_conditionally: bool = True


_PASSES = (
    _Pass(),
    _Pass(strip_unlikely=False),
    _Pass(strip_unlikely=False, weigh_classes=False),
    _Pass(strip_unlikely=False, weigh_classes=False, clean_conditionally=False),
)
# Readability's default: an attempt that keeps fewer characters than this is retried more leniently.
_MIN_ARTICLE_CHARS = 500


def _is_furniture(node: LexborNode, strip_unlikely: bool) -> bool:
    tag = node.tag
    if tag in _FURNITURE:
        return True
    attrs = node.attributes
    if "hidden" in attrs or attrs.get("aria-hidden") == "true" or (attrs.get("role") in _UNLIKELY_ROLES):
        return True
    if _HIDDEN_STYLE.search(attrs.get("style") or ""):
        return True
    if not strip_unlikely or tag in ("body", "html", "article", "main", "a", "table", "tbody", "tr", "td"):
        return False
    hints = _hints(node)
    return bool(hints.strip()) and bool(_UNLIKELY.search(hints)) and not _MAYBE.search(hints)


class _Stats:
    """Text length, link-text length and commas per element (and of its inline text), in one pass."""

    def __init__(self, root: LexborNode, skip: set[int]) -> None:
        self.text: dict[int, int] = {}
        self.links: dict[int, int] = {}
        self.commas: dict[int, int] = {}
        # Text not inside a block child: what Readability would wrap into a paragraph.
        self.own: dict[int, int] = {}
        self.own_commas: dict[int, int] = {}
        self.nodes: dict[int, LexborNode] = {}
        self.parent: dict[int, int] = {}
        self.order: list[int] = []
        self._walk(root, skip, in_link=False)
        self.position = {key: i for i, key in enumerate(self.order)}

    def _walk(self, node: LexborNode, skip: set[int], in_link: bool) -> tuple[int, int, int, int, int]:
        """(text, link text, commas, inline text, inline commas) of ``node``; "inline" stops at blocks."""
        key = node.mem_id
        self.nodes[key] = node
        self.order.append(key)
        text = links = commas = own = own_commas = 0
        in_link = in_link or node.tag == "a"
        for child in _children(node):
            tag = child.tag
            if tag == "-text":
                content = child.text_content or ""
                n = len(_WS.sub(" ", content).strip())
                c = content.count(",") + content.count("\uff0c")
                text += n
                own += n
                commas += c
                own_commas += c
                if in_link:
                    links += n
            elif tag in ("-comment", "-doctype") or tag in _DROP or child.mem_id in skip:
                continue
            else:
                self.parent[child.mem_id] = key
                t, lk, c, o, oc = self._walk(child, skip, in_link)
                text += t
                links += lk
                commas += c
                if tag not in _BLOCK:
                    own += o
                    own_commas += oc
        self.text[key], self.links[key], self.commas[key] = text, links, commas
        self.own[key], self.own_commas[key] = own, own_commas
        return text, links, commas, own, own_commas

    def link_density(self, key: int) -> float:
        return self.links[key] / self.text[key] if self.text[key] else 0.0

    def ancestors(self, key: int, depth: int) -> list[int]:
        out: list[int] = []
        while len(out) < depth and key in self.parent:
            key = self.parent[key]
            out.append(key)
        return out


def _furniture(root: LexborNode, strip_unlikely: bool) -> set[int]:
    """``mem_id`` of the furniture subtrees (their descendants are not visited)."""
    out: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        for child in _children(node):
            if child.tag in ("-text", "-comment", "-doctype") or child.tag in _DROP:
                continue
            if _is_furniture(child, strip_unlikely):
                out.add(child.mem_id)
            else:
                stack.append(child)
    return out


def _scores(stats: _Stats, weigh_classes: bool) -> dict[int, float]:
    """Readability's content scores of the ancestors of paragraph-like elements, link-discounted."""
    scores: dict[int, float] = {}
    for key in stats.order:
        node = stats.nodes[key]
        length = stats.own[key]
        if length < 25 or node.tag not in _BLOCK:
            continue
        score = 1 + stats.own_commas[key] + min(length / 100, 3)
        # A paragraph element credits its ancestors; a container's loose inline text is a paragraph
        # of its own, so the container itself is the first ancestor.
        first = stats.ancestors(key, 5) if node.tag in _PARAGRAPHS else [key, *stats.ancestors(key, 4)]
        for level, ancestor in enumerate(first):
            if ancestor not in scores:
                anode = stats.nodes[ancestor]
                weight = _class_weight(anode) if weigh_classes else 0
                scores[ancestor] = _TAG_SCORE.get(anode.tag, 0) + weight
            scores[ancestor] += score / (1 if level == 0 else 2 if level == 1 else level * 3)
    return {k: s * (1 - stats.link_density(k)) for k, s in scores.items()}


def _top_candidate(stats: _Stats, scores: dict[int, float]) -> int:
    top = max(scores, key=lambda k: (scores[k], -stats.position[k]))
    # Several near-best candidates under one ancestor: the article is that ancestor.
    near = [k for k, s in scores.items() if k != top and s >= 0.75 * scores[top]]
    if len(near) >= 2:
        near_ancestors = [set(stats.ancestors(k, 50)) for k in near]
        for ancestor in stats.ancestors(top, 50):
            if sum(ancestor in lineage for lineage in near_ancestors) >= 2:
                if stats.nodes[ancestor].tag != "html":
                    top = ancestor
                break
    # A candidate that is its parent's only content: the parent is the article.
    while top in stats.parent:
        parent = stats.parent[top]
        if stats.nodes[parent].tag in ("body", "html") or stats.text[parent] > stats.text[top] * 1.1:
            break
        top = parent
    return top


def _article_parts(stats: _Stats, top: int, scores: dict[int, float]) -> list[int]:
    """The top candidate and the siblings that continue it (Readability's sibling rule)."""
    parent = stats.parent.get(top)
    if parent is None:
        return [top]
    top_score = scores.get(top, 0.0)
    threshold = max(10.0, top_score * 0.2)
    top_class = stats.nodes[top].attributes.get("class") or ""
    parts: list[int] = []
    for child in _children(stats.nodes[parent]):
        key = child.mem_id
        if key not in stats.text:
            continue
        if key == top:
            parts.append(key)
            continue
        bonus = top_score * 0.2 if top_class and child.attributes.get("class") == top_class else 0.0
        if scores.get(key, 0.0) + bonus >= threshold:
            parts.append(key)
        elif child.tag == "p":
            length, density = stats.text[key], stats.link_density(key)
            text = child.text(deep=True) or ""
            if (length > 80 and density < 0.25) or (0 < length <= 80 and density == 0 and ". " in text):
                parts.append(key)
    return parts


def _junk_inside(stats: _Stats, parts: list[int], weigh_classes: bool) -> set[int]:
    """Blocks inside the article that are link lists or furniture (Readability's conditional clean)."""
    out: set[int] = set()
    stack = list(parts)
    while stack:
        key = stack.pop()
        stack.extend(c.mem_id for c in _children(stats.nodes[key]) if c.mem_id in stats.text)
        node = stats.nodes[key]
        if node.tag not in _CLEANED:
            continue
        text = stats.text[key]
        density = stats.link_density(key)
        weight = _class_weight(node) if weigh_classes else 0
        if (
            (weight < 0 and text < 500)
            or (text and density > 0.5 and node.tag != "p")
            or (text and density > 0.2 and weight < 25 and text < 300 and node.tag != "p")
            or (node.tag == "p" and density > 0.8 and text < 200)
        ):
            out.add(key)
    return out


_CLEANED = frozenset({"div", "section", "ul", "ol", "table", "p", "span", "center", "dl", "li"})


def _extract(root: LexborNode, how: _Pass) -> str:
    skip = _furniture(root, how.strip_unlikely)
    stats = _Stats(root, skip)
    scores = _scores(stats, how.weigh_classes)
    if not scores:
        return _Writer(drop=_DROP | _FURNITURE, skip=frozenset(skip)).render(root)
    top = _top_candidate(stats, scores)
    parts = _article_parts(stats, top, scores)
    junk = _junk_inside(stats, parts, how.weigh_classes) if how.clean_conditionally else set()
    writer = _Writer(drop=_DROP | _FURNITURE, skip=frozenset(skip | junk))
    return "\n\n".join(t for t in (writer.render(stats.nodes[p]) for p in parts) if t)


def main_content(markup: str) -> str:
    """The article text of a web page (see the module docstring).

    Tries Readability's passes from the strictest down and keeps the first that yields at least
    ``_MIN_ARTICLE_CHARS`` characters (else the longest): furniture hints are wrong often enough
    (a page wrapper with class "ad-margins") that a strict pass alone loses whole articles.
    """
    root = _parse(markup).body
    if root is None:
        return ""
    best = ""
    for how in _PASSES:
        text = _extract(root, how)
        if len(text) >= _MIN_ARTICLE_CHARS:
            return text
        best = max(best, text, key=len)
    return best


def is_whole_page(markup: str) -> bool:
    """A document rather than a fragment: it has an ``<html>`` or ``<body>`` element."""
    return _PAGE.search(markup) is not None


# --- simple inline HTML, vectorized ----------------------------------------------------------------
#
# Most HTML in chat data is a few paragraphs with inline emphasis (``<p>What is <b>X</b>?</p>``).
# On that subset html_to_text's tree walk reduces to string rewrites: every p/div/section/article
# tag ends a block, <br> is a newline, other tags vanish, entities are decoded, and each block is
# whitespace-collapsed and stripped. ``simple_inline_html`` tells which segments are in the subset
# (those whose tree is known without building it) and ``simple_inline_to_text`` renders them with
# Polars regexes over the whole column, identically to ``html_to_text``; the rest go to the parser.

_BLOCK_TAGS = ("p", "div", "section", "article")
_INLINE_TAGS = ("span", "b", "i", "em", "strong", "u", "font", "small", "sup", "sub")
# HTML's own whitespace (not Unicode's: ``<p\u00a0x>`` is no <p>), attributes, the tag's end.
_HTML_SPACE = "[ \\t\\n\\r\\f]"
_ATTRIBUTES = (
    f"(?:{_HTML_SPACE}+[a-zA-Z_:][-a-zA-Z0-9_:.]*(?:{_HTML_SPACE}*={_HTML_SPACE}*"
    f"(?:\"[^\"]*\"|'[^']*'|[^ \\t\\n\\r\\f\"'=<>`]+))?)*{_HTML_SPACE}*/?>"
)


def _tags(names: tuple[str, ...]) -> str:
    """Opening or closing tags of ``names``, in any case (spelled out: ``(?i)`` would let the Kelvin
    sign match "k" and the long s "s", which HTML does not)."""
    spelled = ("".join(f"[{c}{c.upper()}]" for c in name) for name in names)
    return f"</?(?:{'|'.join(spelled)}){_ATTRIBUTES}"


_BLOCK_TAG = _tags(_BLOCK_TAGS)
_INLINE_TAG = _tags(_INLINE_TAGS)
_BR_TAG = _tags(("br",))
# A "<" of a simple segment starts one of those tags or is text ("a < b", "<3", at the end).
_SIMPLE_LT = f"{_tags((*_BLOCK_TAGS, *_INLINE_TAGS, 'br'))}|<[^a-zA-Z!/?<]|<$"
# Entities the regex path decodes: HTML 4's names (with HTML5's values: &lang; is now U+27E8; none
# is ASCII whitespace, which the parser would decode before spaces are collapsed) and the usual
# numeric quotes and spaces.
_ENTITIES = {
    **{f"&{name};": html.unescape(f"&{name};") for name in name2codepoint},
    **{
        f"&{ref};": html.unescape(f"&{ref};")
        for ref in ("#39", "#x27", "#34", "#x22", "#38", "#60", "#62", "#160")
    },
}
# What ``str.strip`` strips (Unicode whitespace plus \x1c-\x1f): ``_flush`` strips every block.
PY_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_PY_SPACE = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]"
_BLOCK_END = "\x00"


def _without_tags(text: pl.Expr) -> pl.Expr:
    """Whitespace collapsed as in text nodes, block tags as ``_BLOCK_END``, <br> as a newline."""
    return (
        text.str.replace_all("[ \t\n\r\f\v]{2,}|[\t\n\r\f\v]", " ")
        .str.replace_all(_BLOCK_TAG, _BLOCK_END)
        .str.replace_all(_BR_TAG, "\n")
        .str.replace_all(_INLINE_TAG, "")
    )


def simple_inline_html(text: pl.Series) -> pl.Series:
    """Which segments are simple inline HTML, where html_to_text is a string rewrite (see above).

    Simple means: only the tags above and text "<" (``_SIMPLE_LT``); no "&" starting a reference
    other than ``_ENTITIES``, attributes included (``&copy2024`` and ``&notit;`` decode in
    surprising ways); no NUL (the
    parser drops it); div/section/article and inline tags properly nested (the parser ignores a
    stray ``</div>``, which then ends no block); no inline element open at a block tag
    (``<b>x<p>y</p>z</b>`` makes "z" a block of its own). Unclosed tags are fine. On such markup the
    parser builds the tree the tags spell, so blocks split at exactly the block tags.
    """
    frame = pl.DataFrame({"text": text}).with_row_index("_r")
    t = pl.col("text")
    lexical = frame.select(
        ~t.str.contains(_BLOCK_END, literal=True)
        & (t.str.count_matches("<", literal=True) == t.str.count_matches(_SIMPLE_LT))
        & ~t.str.replace_many(dict.fromkeys(_ENTITIES, "")).str.contains("&[A-Za-z0-9#]")
    ).to_series()
    tags = (
        frame.select("_r", t.str.extract_all("</?[A-Za-z]+").alias("tag"))
        .explode("tag")
        .drop_nulls("tag")
        .select(
            "_r",
            pl.col("tag").str.starts_with("</").alias("close"),
            pl.col("tag").str.to_lowercase().str.strip_chars_start("</").alias("name"),
        )
        .filter(pl.col("name") != "br")
    )
    step = pl.when(pl.col("close")).then(-1).otherwise(1)
    inline = pl.col("name").is_in(_INLINE_TAGS)
    # Open inline elements at each tag: must be none at a block tag.
    wrapped = tags.filter(
        (pl.when(inline).then(step).otherwise(0).cum_sum().over("_r") != 0) & ~inline
    ).get_column("_r")
    # Nesting without <p> (it closes itself): a closing tag's level is the depth before it, an opening
    # tag's the depth after it; a closing tag must follow, on its level, an opening one of its name.
    nested = tags.filter(pl.col("name") != "p").with_columns(depth=step.cum_sum().over("_r"))
    nested = nested.with_columns(
        level=pl.when(pl.col("close")).then(pl.col("depth") + 1).otherwise(pl.col("depth"))
    )
    before = [pl.col(c).shift().over("_r", "level") for c in ("close", "name")]
    misnested = nested.filter(
        (pl.col("depth") < 0)
        | (pl.col("close") & (before[0].fill_null(True) | (before[1] != pl.col("name"))))
    ).get_column("_r")
    broken = frame.get_column("_r").is_in(pl.concat([wrapped, misnested]).implode())
    return (lexical & ~broken).alias("simple")


def simple_inline_to_text(text: pl.Expr) -> pl.Expr:
    """``html_to_text`` of simple inline HTML (``simple_inline_html``), as one expression."""
    return (
        _without_tags(text)
        .str.replace_many(_ENTITIES, leftmost=True)
        .str.replace_all(" {2,}", " ")
        .str.replace_all(" *\n *", "\n")
        .str.replace_all(f"{_PY_SPACE}*{_BLOCK_END}{_PY_SPACE}*", _BLOCK_END)
        .str.replace_all(f"{_BLOCK_END}+", "\n\n")
        .str.strip_chars(PY_WHITESPACE)
    )

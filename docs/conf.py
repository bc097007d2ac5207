"""Sphinx configuration of the agentstream documentation site.

Build it with ``python3 dev.py docs`` (HTML in ``docs/_build/html``); ``python3 dev.py
test`` builds it too, with every warning an error. The pages stay Markdown (MyST); the
API reference comes from the docstrings (autodoc + napoleon). Nothing here needs the
network: no intersphinx, no remote images or themes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import getdoc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout builds without installing the package

import agentstream  # noqa: E402  (after the path is set)

project = "agentstream"
author = "agentstream developers"
copyright = "agentstream developers"
release = version = agentstream.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST: the pages are the same Markdown files GitHub shows ------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
# `[text](lifecycle.md#starting-and-stopping)`: GitHub-style anchors for every heading.
myst_heading_anchors = 4

# -- autodoc + napoleon: our Google-style docstrings (Args:, Raises:, Example:) ------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- nitpicky mode (-n): every cross-reference must resolve -------------------------
# Without intersphinx (no network), names from outside the package (the standard
# library, aiohttp, anyio, msgspec) cannot resolve; they are listed here. A broken
# reference to one of OUR names still fails the build.
nitpick_ignore_regex = [
    (r"py:.*", r"(asyncio|aiohttp|anyio|msgspec|ssl|logging|datetime|decimal|enum)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|types|threading|concurrent\.futures)(\..*)?"),
    (r"py:.*", r"(Decimal|datetime|timedelta|Path|Enum|IntEnum|StrEnum|Struct|Any)"),
    (r"py:.*", r"(Callable|Coroutine|Awaitable|AsyncIterator|Iterator|Iterable|Sequence)"),
    (r"py:.*", r"(Mapping|TypeVar|Self|Literal|ClassVar|NamedTuple)"),
    (r"py:.*", r"(SSLContext|Logger|BlockingPortal|ClientSession|web\..*)"),
    (r"py:.*", r"(Exception|BaseException|ValueError|TimeoutError|RuntimeError|OSError)"),
    (r"py:.*", r"(ConnectionError|TypeError|KeyError|LookupError)"),
    (r"py:.*", r"(int|float|str|bytes|bool|dict|list|tuple|set|frozenset|object|type|None)"),
    (r"py:.*", r"(_ssl\.SSLContext|random\.Random|date)"),
    # Type variables of generic signatures (`def on_ticker(...) -> Callable[[H], H]`).
    (r"py:class", r"agentstream\..*\.[A-Z]"),
    # Internal types that appear in public signatures but are not part of the API:
    # the simulated market's and accounts' records, and the venue seam's enums.
    (r"py:class", r"agentstream\.sim\.(accounts|market|tradier)\.[A-Za-z]+"),
    (r"py:class", r"(Credential|Kind)"),
]

# -- HTML ---------------------------------------------------------------------------
html_theme = "furo"
html_title = f"agentstream {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


class CliHelp(SphinxDirective):
    """``agentstream-cli``: the ``--help`` text of the command and of each subcommand.

    Generated from :func:`agentstream.cli.build_parser` at build time, so a new option or
    subcommand shows up on the CLI page without anyone copying it there.
    """

    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {}

    def run(self) -> list[nodes.Node]:
        from agentstream.cli import build_parser

        os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal; pin the width
        parser = build_parser()
        out: list[nodes.Node] = [self._block("agentstream --help", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(self._block(f"agentstream {name} --help", sub.format_help()))
        return out

    @staticmethod
    def _block(title: str, text: str) -> nodes.Node:
        section = nodes.container()
        command = f"$ {title}"  # a literal: smartquotes would turn "--" into a dash
        section += nodes.paragraph("", "", nodes.literal(command, command))
        section += nodes.literal_block(text, text, language="text")
        return section


def _constant_docs(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Give a re-exported constant the ``#:`` comment of the module that defines it.

    ``agentstream.sim.DEMO_API_KEY`` is defined in ``agentstream.sim.server``; autodoc
    looks for its ``#:`` comment in ``agentstream.sim`` only, finds none, and falls back
    to the docstring of ``str`` itself. Find the comment where the name is defined.
    """
    if what not in {"data", "attribute"} or not _is_type_doc(obj, lines):
        return
    attr = name.rpartition(".")[2]
    lines[:] = []  # never the docstring of str, tuple or a union type
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith("agentstream") or getattr(module, attr, lines) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except PycodeError:
            continue
        if ("", attr) in docs:
            lines.extend(docs["", attr])
            return


def _is_type_doc(obj: Any, lines: list[str]) -> bool:
    doc = getdoc(type(obj))
    return bool(doc) and " ".join(" ".join(lines).split()) == " ".join(str(doc).split())


def _dataclass_signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: str | None
) -> tuple[str | None, str | None] | None:
    """Show a dataclass field's ``default_factory`` as ``...``.

    Python prints it as ``<factory>``, which is not valid Python: Sphinx then cannot
    parse the signature and splits it at every comma (``Mapping[str`` ...).
    """
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), ret
    return None


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("agentstream-cli", CliHelp)
    app.connect("autodoc-process-docstring", _constant_docs)
    app.connect("autodoc-process-signature", _dataclass_signature)
    return {"parallel_read_safe": True}

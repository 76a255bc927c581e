"""Any Unicode text to LaTeX that a bare article (OT1, no packages) typesets.

pylatexenc's maintained table gives each character's LaTeX; many entries need packages (amssymb,
T1 fonts, cyrillic), so only the code points listed in latex_kernel_chars.txt, the entries that
compile in a bare article, are taken from it. That file is generated, never edited:
``python -m bench.report.latex_text`` rebuilds it with pdflatex. Letters with combining accents
(β̃, ᾱ) become math or text accents, sub- and superscripts become math scripts, other
compatibility forms fall back to their NFKC text, and anything still without a form is written
as its code point, so no input can stop pdflatex.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import pylatexenc
from pylatexenc.latexencode import get_builtin_uni2latex_dict

CHARSET_PATH = Path(__file__).with_name("latex_kernel_chars.txt")

# Combining marks as the accents base LaTeX defines in math mode and in OT1 text.
_MATH_ACCENTS = {
    "\u0300": r"\grave", "\u0301": r"\acute", "\u0302": r"\hat", "\u0303": r"\tilde",
    "\u0304": r"\bar", "\u0305": r"\bar", "\u0306": r"\breve", "\u0307": r"\dot",
    "\u0308": r"\ddot", "\u030c": r"\check", "\u20d7": r"\vec",
}
_TEXT_ACCENTS = {
    "\u0300": r"\`", "\u0301": r"\'", "\u0302": r"\^", "\u0303": r"\~", "\u0304": r"\=",
    "\u0305": r"\=", "\u0306": r"\u", "\u0307": r"\.", "\u0308": r'\"', "\u030a": r"\r",
    "\u030b": r"\H", "\u030c": r"\v", "\u0323": r"\d", "\u0327": r"\c", "\u0331": r"\b",
}
_ENSUREMATH = re.compile(r"^\\ensuremath\{(.*)\}$", re.S)
# ASCII LaTeX reads as markup; the rest of printable ASCII is typeset as it is.
_ASCII_SPECIAL = set("\\&%$#_{}~^<>\"")


@functools.cache
def _table() -> dict[int, str]:
    return get_builtin_uni2latex_dict()


@functools.cache
def kernel_code_points() -> frozenset[int]:
    """Code points whose pylatexenc LaTeX compiles in a bare article (from CHARSET_PATH)."""
    lines = CHARSET_PATH.read_text(encoding="ascii").splitlines()
    return frozenset(int(line, 16) for line in lines if line and not line.startswith("#"))


def _code_point_tex(ch: str) -> str:
    return rf"\texttt{{[U+{ord(ch):04X}]}}"


def _math_body(tex: str) -> str | None:
    match = _ENSUREMATH.match(tex)
    return match.group(1) if match else None


def _script_tex(kind: str, base: str) -> str:
    inner = char_tex(base)
    body = _math_body(inner)
    if body is None:
        body = rf"\mathrm{{{base}}}" if base.isascii() and base.isalnum() else rf"\mbox{{{inner}}}"
    return rf"\ensuremath{{{'^' if kind == '<super>' else '_'}{{{body}}}}}"


def char_tex(ch: str) -> str:
    """One character (no combining marks) as LaTeX for a bare article."""
    if ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp"):
        return " "
    if ch.isascii() and ch.isprintable() and ch not in _ASCII_SPECIAL:
        return ch
    decomposition = unicodedata.decomposition(ch).split()
    if decomposition and decomposition[0] in ("<super>", "<sub>") and len(decomposition) == 2:
        return _script_tex(decomposition[0], chr(int(decomposition[1], 16)))
    if ord(ch) in kernel_code_points():
        tex = _table()[ord(ch)]
        # A macro's trailing letter would otherwise merge with the text that follows.
        return "{" + tex + "}" if re.search(r"\\[A-Za-z]+$", tex) else tex
    compatible = unicodedata.normalize("NFKC", ch)
    if compatible != ch and all(unicodedata.normalize("NFKC", c) == c for c in compatible):
        return escape_latex(compatible)
    return _code_point_tex(ch)


def _accented_tex(base: str, marks: str) -> str:
    tex = char_tex(base)
    body = _math_body(tex)
    for mark in marks:
        if body is not None and mark in _MATH_ACCENTS:
            body = rf"{_MATH_ACCENTS[mark]}{{{body}}}"
        elif body is None and mark in _TEXT_ACCENTS:
            tex = rf"{_TEXT_ACCENTS[mark]}{{{tex}}}"
        else:
            tex = (rf"\ensuremath{{{body}}}" if body is not None else tex) + _code_point_tex(mark)
            body = None
    return rf"\ensuremath{{{body}}}" if body is not None else tex


def _clusters(text: str) -> list[str]:
    """Each character with the combining marks that follow it (a leading mark stands alone)."""
    clusters: list[str] = []
    for ch in text:
        if clusters and unicodedata.combining(ch):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def escape_latex(text: str) -> str:
    """Plain text (titles, labels, captions) to LaTeX that a bare article typesets."""
    out = []
    for cluster in _clusters(unicodedata.normalize("NFC", text)):
        decomposed = unicodedata.normalize("NFD", cluster)
        if unicodedata.combining(decomposed[0]):
            out.append("".join(_code_point_tex(mark) for mark in decomposed))
        elif len(cluster) == 1 and (ord(cluster) in kernel_code_points() or len(decomposed) == 1):
            out.append(char_tex(cluster))
        else:
            out.append(_accented_tex(decomposed[0], decomposed[1:]))
    return "".join(out)


_PROBE = r"""\documentclass{article}
\begin{document}
%s
\end{document}
"""


def _failing_lines(entries: list[tuple[int, str]], workdir: Path) -> set[int]:
    body = "\n".join(rf"{tex}\par" for _, tex in entries)
    (workdir / "probe.tex").write_text(_PROBE % body, encoding="utf-8")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "probe.tex"], cwd=workdir,
                   capture_output=True, check=False)
    log = (workdir / "probe.log").read_text(encoding="utf-8", errors="replace")
    # The body starts on line 3 of probe.tex; each error names its line as 'l.<n>'.
    return {int(n) - 3 for n in re.findall(r"^l\.(\d+)", log, re.M)}


def write_kernel_charset(path: Path = CHARSET_PATH) -> int:
    """Compile every pylatexenc entry in a bare article, dropping failures until none fail."""
    entries = sorted(_table().items())
    with tempfile.TemporaryDirectory() as tmp:
        while failing := _failing_lines(entries, Path(tmp)):
            entries = [entry for i, entry in enumerate(entries) if i not in failing]
    header = (f"# Generated by python -m bench.report.latex_text from pylatexenc "
              f"{pylatexenc.__version__}: code points whose LaTeX compiles in a bare article.\n")
    path.write_text(header + "".join(f"{cp:04X}\n" for cp, _ in entries), encoding="ascii")
    return len(entries)


if __name__ == "__main__":
    print(f"{write_kernel_charset()} code points written to {CHARSET_PATH}", file=sys.stderr)

"""Text as a reader sees it, for the guards that look for what a reader would see.

Full-width and other compatibility forms read as their plain letters ("ＧＢ２９" as "GB29"),
and invisible characters (zero-width spaces and joiners, soft hyphens, byte-order marks,
combining marks) read as nothing. Written that way, an account number, a closing tag or an
instruction looks the same to a person or a model as the plain text, so the guards must not
see less than they do.
"""

from __future__ import annotations

import unicodedata

_HIDDEN = frozenset({"Cf", "Mn"})


def visible_with_origins(text: str) -> tuple[str, list[int]]:
    """``text`` as read, and for each of its characters the index in ``text`` it came from.

    Each character is folded on its own (NFKC), so every folded character has one origin.
    """
    read: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char.isascii():
            read.append(char)
            origin.append(index)
            continue
        for folded in unicodedata.normalize("NFKC", char):
            if unicodedata.category(folded) not in _HIDDEN:
                read.append(folded)
                origin.append(index)
    return "".join(read), origin


def visible_text(text: str) -> str:
    """``text`` as read (see the module's docstring); ASCII text is returned as it is.

    Folded whole (NFKC), unlike `visible_with_origins`: a letter and its combining accent
    compose first ("u" + U+0308 reads "ü", as a reader sees it), and only marks left over
    are dropped.
    """
    if text.isascii():
        return text
    folded = unicodedata.normalize("NFKC", text)
    return "".join(c for c in folded if unicodedata.category(c) not in _HIDDEN)

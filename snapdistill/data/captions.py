"""Caption cleaning for `recaption --mode clean`: small pure rules, applied in order by `clean`.

Web captions (LAION's alt texts above all) carry URLs, HTML, e-mail addresses, camera file names and
stock-photo boilerplate. Each rule removes one kind; `clean` then fixes the spacing, collapses repeated
words and cuts the text to CLIP's 77 tokens at a word boundary, since a text encoder never sees more.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata

CLIP_CONTENT_TOKENS = 75  # 77 minus the start and end tokens

_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_FILENAME = re.compile(
    r"\b[\w-]+\.(?:jpe?g|png|gif|webp|tiff?|bmp|heic|raw|cr2|nef|dng)\b"
    r"|\b(?:IMG|DSC[NF]?|PICT|GOPR|PXL|MVIMG)[_-]?\d{3,}\w*\b",
    re.IGNORECASE,
)
_PRINT_KINDS = r"(?:Art|Canvas|Framed|Metal|Acrylic|Photographic|Poster|Wood|Fine Art) Prints?"
_BOILERPLATE = re.compile(
    "|".join([
        rf"\b{_PRINT_KINDS}\s+by\b.*$",                       # "... Canvas Print by Jane Doe"
        rf"\|\s*{_PRINT_KINDS}\b",                            # "... | Art Print"
        r"\b(?:Royalty[- ]Free\s+)?Stock\s+(?:Photo(?:graph|graphy|s)?|Images?|Illustrations?|Vectors?|Footage)"
        r"(?:\s*[-:#]?\s*\d{4,})?",                           # "Royalty Free Stock Photo - 12345678"
        r"\bRoyalty[- ]Free\b",
        r"\b(?:Shutterstock|Getty Images|iStock(?:photo)?|Alamy|Dreamstime|Depositphotos|123RF|Adobe Stock)\b",
    ]),
    re.IGNORECASE,
)
_REPEAT = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SEPARATORS = " \t\n|-–—,;:/"
_EMPTY_PAIRS = re.compile(r"\(\s*\)|\[\s*\]")
_DOUBLE_SEP = re.compile(r"\s*([|,;:])(?:\s*[|,;:])+")


def fix_unicode(text: str) -> str:
    """Repair mojibake ("cafÃ©" -> "café") with ftfy, then normalise to NFC."""
    import ftfy

    return unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=False))


def strip_html(text: str) -> str:
    """Drop tags and decode entities: "<b>red</b> &amp; blue" -> "red & blue"."""
    return html.unescape(_TAG.sub(" ", text))


def strip_urls(text: str) -> str:
    return _URL.sub(" ", text)


def strip_emails(text: str) -> str:
    return _EMAIL.sub(" ", text)


def strip_filenames(text: str) -> str:
    """Camera and file names: "IMG_2034.JPG", "DSC01234", "photo-1.png"."""
    return _FILENAME.sub(" ", text)


def strip_boilerplate(text: str) -> str:
    """Stock-photo and print-shop phrases: "Royalty Free Stock Photo", "Canvas Print by …", "| Art Print"."""
    return _BOILERPLATE.sub(" ", text)


def fix_whitespace(text: str) -> str:
    """Single spaces, none before punctuation, no empty brackets or dangling separators at the ends."""
    text = _EMPTY_PAIRS.sub(" ", text)
    text = _DOUBLE_SEP.sub(r"\1", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(_SEPARATORS)


def collapse_repeats(text: str) -> str:
    """A word repeated in a row is kept once: "a a red red red car" -> "a red car"."""
    return _REPEAT.sub(r"\1", text)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from snapdistill.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def clip_token_count(text: str) -> int:
    """CLIP BPE tokens of `text`, without the start and end tokens."""
    return len(_tokenizer()(text, add_special_tokens=False, verbose=False)["input_ids"])


def cut_to_tokens(text: str, max_tokens: int = CLIP_CONTENT_TOKENS) -> str:
    """The longest prefix of whole words that fits in `max_tokens` CLIP tokens (77 with start/end)."""
    if clip_token_count(text) <= max_tokens:
        return text
    words, used, kept = text.split(" "), 0, []
    for word in words:
        used += clip_token_count(word)  # CLIP splits on spaces first, so counts add up word by word
        if used > max_tokens:
            break
        kept.append(word)
    return " ".join(kept).rstrip(_SEPARATORS)


# The removal rules in the order `clean` applies them (unicode first, so the others see clean text).
RULES = (fix_unicode, strip_html, strip_urls, strip_emails, strip_filenames, strip_boilerplate)


def clean(text: str | None, *, max_tokens: int = CLIP_CONTENT_TOKENS) -> str:
    """Every rule in order, then spacing, repeated words and the 77-token cut; "" when nothing is left."""
    if not isinstance(text, str):
        return ""
    for rule in RULES:
        text = rule(text)
    text = fix_whitespace(collapse_repeats(fix_whitespace(text)))
    return cut_to_tokens(text, max_tokens) if text else ""

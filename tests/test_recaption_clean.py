"""Caption cleaning rules: each shown as input -> expected output."""

import pytest

from snapdistill.data import captions as c


@pytest.mark.parametrize(("rule", "text", "expected"), [
    (c.strip_urls, "see https://example.com/a?b=1 and www.foo.org/x now", "see   and   now"),
    (c.strip_urls, "ftp://files.example.net/pic.jpg", " "),
    (c.strip_html, "<p>red &amp; <b>blue</b></p>", " red &  blue  "),
    (c.strip_html, "caf&eacute; &#39;open&#39; &quot;late&quot;", "café 'open' \"late\""),
    (c.strip_emails, "mail jane.doe+art@example.co.uk today", "mail   today"),
    (c.strip_filenames, "IMG_2034.JPG a dog", "  a dog"),
    (c.strip_filenames, "beach DSC01234 at dawn, photo-1.png", "beach   at dawn,  "),
    (c.strip_filenames, "version 2.0 of the plan", "version 2.0 of the plan"),  # not a file name
    (c.strip_boilerplate, "Red car Royalty Free Stock Photo", "Red car  "),
    (c.strip_boilerplate, "Red car stock photo - 12345678", "Red car  "),
    (c.strip_boilerplate, "Sunset over the sea Canvas Print by John Smith", "Sunset over the sea  "),
    (c.strip_boilerplate, "Mountain lake | Art Print", "Mountain lake  "),
    (c.strip_boilerplate, "Old barn - Shutterstock", "Old barn -  "),
    (c.fix_unicode, "cafÃ© at night", "café at night"),
    (c.fix_unicode, "e\u0301clair", "\u00e9clair"),  # NFC: e + combining acute -> é
    (c.fix_whitespace, "  the cat  ,  sat .  ", "the cat, sat."),
    (c.fix_whitespace, "| a red barn ( ) -", "a red barn"),
    (c.fix_whitespace, "sky , , | clouds", "sky, clouds"),
    (c.collapse_repeats, "a a red red red car", "a red car"),
    (c.collapse_repeats, "The the dog", "The dog"),
    (c.collapse_repeats, "red reddish", "red reddish"),
])
def test_each_rule(rule, text, expected):
    assert rule(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("IMG_2034.JPG Sunset over the sea Canvas Print by John Smith", "Sunset over the sea"),
    ("<b>Red car</b> Royalty Free Stock Photo https://x.com", "Red car"),
    ("Red car - visit https://x.com", "Red car - visit"),
    ("a  a dog on on the beach | Art Print", "a dog on the beach"),
    ("contact me@example.com for the the cafÃ© print", "contact for the café print"),
    ("https://example.com", ""),
    (None, ""),
])
def test_clean_applies_every_rule(text, expected):
    assert c.clean(text) == expected


def test_cut_to_77_clip_tokens_at_a_word_boundary():
    words = [f"word{i}" for i in range(100)]  # CLIP splits digits: "word12" is 3 tokens
    text = " ".join(words)
    assert c.clip_token_count("red") == 1 and c.clip_token_count("word12") == 3
    cut = c.clean(text)
    assert text.startswith(cut) and cut.split(" ") == words[: len(cut.split(" "))]  # whole words only
    assert c.clip_token_count(cut) <= 75 < c.clip_token_count(cut + " " + words[len(cut.split(" "))])
    assert c.clean("a short caption") == "a short caption"

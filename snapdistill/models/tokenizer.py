"""The real CLIP BPE tokenizer, rebuilt offline from the vocabulary file that open_clip ships.

open_clip's `bpe_simple_vocab_16e6.txt.gz` holds CLIP's merges; the vocabulary is the 256 byte
symbols, the same with `</w>`, one token per merge, then the two special tokens (49,408 in all).
The result is saved as a normal tokenizer folder and loaded with `CLIPTokenizer.from_pretrained`,
because transformers 5 ignores `vocab_file=`/`merges_file=` keywords and yields an empty vocabulary.
"""

from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2


def _open_clip_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: Path) -> Path:
    """Write `vocab.json` and `merges.txt` of CLIP's BPE into `folder`; return the folder."""
    from open_clip.tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _N_MERGES + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return folder


@functools.lru_cache(maxsize=1)
def _cached_tokenizer_dir() -> str:
    return str(write_clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="snapdistill-clip-bpe-"))))


def build_clip_tokenizer():
    """A `CLIPTokenizer` with CLIP's real ids ("red" -> 736), max length 77, padded with <|endoftext|>."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        _cached_tokenizer_dir(), model_max_length=CLIP_MAX_LENGTH, pad_token="<|endoftext|>"
    )

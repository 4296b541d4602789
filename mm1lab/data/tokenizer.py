"""Byte-level BPE tokenizer for ShapeWorld text, with MM1's special tokens at fixed ids.

The special tokens come first, in this order, so their ids never change between training runs:
`<pad>`=0, `<bos>`=1, `<eos>`=2, `<image>`=3, `<|user|>`=4, `<|assistant|>`=5, `<|end|>`=6 (end of a chat turn).
These match `MM1Config` (pad 0, bos 1, eos 2, image 3). The trained vocabulary is at most `vocab_size`
(2048 = the tiny preset's LM vocabulary); a small corpus can stop short of it, which is harmless.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<image>", "<|user|>", "<|assistant|>", "<|end|>")
PAD, BOS, EOS, IMAGE, USER, ASSISTANT, END = SPECIAL_TOKENS
IMAGE_MARKER = IMAGE
DEFAULT_VOCAB_SIZE = 2048

# A space beside an image marker would become a lone byte token ("Ġ"); we drop it so that
# "<image> Question" and "<image>Question" tokenize the same way in training and in evaluation.
_SPACE_AROUND_IMAGE = re.compile(r"[ \t]*<image>[ \t]*")


def default_samples_dir() -> Path:
    """The committed `data_samples/` folder next to the `mm1lab` package."""
    import mm1lab

    return Path(mm1lab.__file__).resolve().parent.parent / "data_samples"


def normalize_markers(text: str) -> str:
    """Remove spaces and tabs touching `<image>` markers (see module note)."""
    return _SPACE_AROUND_IMAGE.sub(IMAGE, text)


class MM1Tokenizer:
    """A thin wrapper around a HF `tokenizers.Tokenizer`: encode/decode plus the special ids as attributes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"tokenizer special tokens must be {SPECIAL_TOKENS} at ids 0..6, got ids {ids}; "
                             "retrain it with mm1lab.data.tokenizer.train_tokenizer")
        self.pad_id, self.bos_id, self.eos_id, self.image_id, self.user_id, self.assistant_id, self.end_id = ids

    @property
    def vocab_size(self) -> int:
        """Number of token ids in use (ids are 0..vocab_size-1)."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it (`<image>`, `<|end|>`, ...) become their ids."""
        return self.tokenizer.encode(normalize_markers(text), add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; special tokens are dropped unless `skip_special=False`."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    def token(self, token_id: int) -> str:
        """The vocabulary string of one id (byte-level, so spaces show as 'Ġ')."""
        return self.tokenizer.id_to_token(token_id)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json (compact, deterministic)."""
        Path(path).write_text(self.tokenizer.to_str() + "\n")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"MM1Tokenizer(vocab_size={self.vocab_size})"


def as_mm1_tokenizer(tokenizer) -> MM1Tokenizer:
    """mm1lab's tokenizer API over `tokenizer`: an MM1Tokenizer as it is, or a transformers fast tokenizer whose
    vocabulary has mm1lab's special tokens at ids 0..6 (an LM folder written by `mm1lab stage0 ship`)."""
    if isinstance(tokenizer, MM1Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; mm1lab's data "
                         "pipeline needs one with its special tokens at ids 0..6")
    return MM1Tokenizer(backend)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2,
                    path: str | Path | None = None) -> MM1Tokenizer:
    """Train a byte-level BPE on `texts`; specials at ids 0..6. Deterministic for the same texts.

    Args:
        texts: training strings (image markers and chat tokens inside them are kept whole).
        vocab_size: upper bound on the vocabulary, specials and the 256 byte tokens included.
        min_frequency: a merge must occur at least this often.
        path: if given, also save tokenizer.json there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((normalize_markers(t) for t in texts), trainer)
    wrapper = MM1Tokenizer(tok)
    if path is not None:
        wrapper.save(path)
    return wrapper


def load_tokenizer(path: str | Path | None = None) -> MM1Tokenizer:
    """Load tokenizer.json; by default the committed `data_samples/tokenizer.json`."""
    from tokenizers import Tokenizer

    path = Path(path) if path is not None else default_samples_dir() / "tokenizer.json"
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}; create it with `mm1lab data samples data_samples/` "
                                "(or `python -m mm1lab.data.cli samples data_samples/`)")
    return MM1Tokenizer(Tokenizer.from_file(str(path)))

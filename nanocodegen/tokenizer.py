"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with the special tokens of the prompt format.

An episode is laid out as

    <|task|> prompt <|code|> attempt 1 <|end|> <|feedback|> feedback 1 <|code|> attempt 2 <|end|> ...

Byte-level BPE can encode any text, so unknown identifiers or unicode never fail to tokenize.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, TASK, CODE, FEEDBACK, END = "<|pad|>", "<|task|>", "<|code|>", "<|feedback|>", "<|end|>"
SPECIAL_TOKENS = (PAD, TASK, CODE, FEEDBACK, END)
TOKENIZER_FILE = "tokenizer.json"


class CodeTokenizer:
    """A thin wrapper that knows the special tokens and keeps untrusted text from forging them."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if None in ids:
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids, strict=True) if i is None]
            raise ValueError(f"tokenizer lacks the special token(s) {missing}; retrain it with CodeTokenizer.train")
        self.pad_id, self.task_id, self.code_id, self.feedback_id, self.end_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> CodeTokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> CodeTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
            raise ValueError(f"cannot load tokenizer {path}: {e}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Encode plain text. Special-token strings inside it are broken up first, so text from a
        task or a program's output cannot inject structure into the prompt."""
        for special in SPECIAL_TOKENS:
            if special in text:
                text = text.replace(special, special.replace("<|", "< |"))
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

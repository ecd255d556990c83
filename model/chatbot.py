"""A loaded checkpoint that answers text: the one object serving code needs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, file_digest, load_checkpoint
from model.decode import DecodeOptions, decode
from model.seq2seq import Seq2Seq, Seq2SeqConfig
from model.text import Tokenizer, detokenize
from model.vocab import Vocab

MAX_INPUT_TOKENS = 40  # the model sees at most the last 40 tokens of a message
FALLBACK_REPLY = "嗯?"  # when there is nothing to answer (empty input) or nothing decoded


def build_model(ckpt: dict, path: Path) -> Seq2Seq:
    try:
        cfg = Seq2SeqConfig.from_dict(ckpt["model_config"])
        model = Seq2Seq(cfg)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not match this model code: {msg}") from None
    return model


class ChatBot:
    """``ChatBot.load(path).reply(text)``: tokenise, encode, decode, detokenise.

    Thread-safe: one reply at a time per instance (a lock); torch's own threads do the math.
    """

    def __init__(
        self,
        model: Seq2Seq,
        vocab: Vocab,
        tokenizer: Tokenizer,
        *,
        version: str,
        path: str,
        decode_options: DecodeOptions | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.version = version
        self.path = path
        self.options = decode_options or DecodeOptions()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        threads: int | None = None,
        quantize: bool = False,
        decode_options: DecodeOptions | dict | None = None,
    ) -> ChatBot:
        """Raises ``CheckpointError`` (one line) for a missing, corrupt or foreign file."""
        path = Path(path)
        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(path, map_location=device)
        try:
            tokenizer = Tokenizer.from_description(ckpt["tokenizer"])
            vocab = Vocab(ckpt["vocab"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        model = build_model(ckpt, path).to(device)
        model.prepare_for_inference(quantize=quantize)
        step = ckpt["train"].get("step", 0) if isinstance(ckpt["train"], dict) else 0
        version = f"s{step}-{file_digest(path)[:8]}"
        if isinstance(decode_options, dict):
            decode_options = DecodeOptions.from_dict(decode_options)
        return cls(
            model, vocab, tokenizer, version=version, path=str(path), decode_options=decode_options
        )

    @property
    def decode_options(self) -> dict:
        return self.options.to_dict()

    def encode_text(self, text: str) -> list[int]:
        return self.vocab.encode(self.tokenizer.tokenize(text))[-MAX_INPUT_TOKENS:]

    def reply(self, text: str, **options) -> str:
        """A non-empty plain-text reply. ``options`` override the DecodeOptions fields."""
        return self.reply_many([text], **options)[0]

    def reply_many(self, texts: list[str], **options) -> list[str]:
        opts = DecodeOptions.from_dict({**self.options.to_dict(), **options})
        ids = [self.encode_text(t) for t in texts]
        todo = [i for i, x in enumerate(ids) if x]
        replies = [FALLBACK_REPLY] * len(texts)
        if todo:
            with self._lock, torch.inference_mode():
                outs = decode(self.model, [ids[i] for i in todo], opts)
            for i, out in zip(todo, outs, strict=True):
                replies[i] = detokenize(self.vocab.decode(out)) or FALLBACK_REPLY
        return replies

"""The model being served: what the service needs from it, and swapping it for a new one.

:class:`ModelHolder` owns the current model, the decoding options it is called with, the
admin's approved answers offered to it, and :meth:`ModelHolder.reload`, which loads a checkpoint
again and swaps it in while batches already handed to the old model finish there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from xianliao.bot.approved import ApprovedReplies
from xianliao.bot.messages import fit_message
from xianliao.bot.model_workers import ModelClosed

logger = logging.getLogger(__name__)


@runtime_checkable
class ReplyModel(Protocol):
    """Everything the service uses of a loaded checkpoint: ``bot.model_workers.ModelWorkerPool``
    has all of it; a ``model.chatbot.ChatBot`` in this process is wrapped by :func:`serving`."""

    version: str
    # Batches the model answers at once (its worker processes; 1 in this process).
    parallelism: int

    @property
    def decode_options(self) -> dict[str, Any]: ...

    def reply(self, text: str, **options: Any) -> str: ...

    def reply_many(self, texts: list[str], **options: Any) -> list[str]:
        """Replies to ``texts``; ``options`` may hold ``extra``: an admin's approved answers
        per text, for the model to consider beside its own."""
        ...

    def close(self) -> None:
        """Stop what the model runs beside the bot, after the batches it is answering."""
        ...


class _InProcess:
    """A model answered on the caller's thread: one batch at a time, nothing to stop."""

    parallelism = 1

    def __init__(self, model: Any) -> None:
        self._model = model
        self.version: str = model.version

    @property
    def decode_options(self) -> dict[str, Any]:
        return self._model.decode_options

    def reply(self, text: str, **options: Any) -> str:
        return self._model.reply(text, **options)

    def reply_many(self, texts: list[str], **options: Any) -> list[str]:
        return self._model.reply_many(texts, **options)

    def close(self) -> None:
        pass


def serving(model: Any) -> ReplyModel:
    """``model`` as a :class:`ReplyModel` (a ChatBot lacks ``parallelism`` and ``close``)."""
    return model if isinstance(model, ReplyModel) else _InProcess(model)


ModelLoader = Callable[[Path], Any]


class ModelHolder:
    """The current model, its decoding options and its reload (see module doc)."""

    def __init__(
        self,
        model: Any,
        *,
        approved: ApprovedReplies | None,
        model_path: Path | None,
        load_model: ModelLoader | None,
        decode_options: dict[str, Any] | None,
    ) -> None:
        self.model: ReplyModel = serving(model)
        self.approved = approved
        self.model_path = model_path
        self.load_model = load_model
        self.decode_options = dict(decode_options or {})
        self._reload_lock = threading.Lock()

    def effective_decode_options(self, model: ReplyModel | None = None) -> dict[str, Any]:
        """The decoding options a reply is made with (model defaults + configured overrides)."""
        model = model or self.model
        return {**dict(model.decode_options), **self.decode_options}

    def generate(self, model: ReplyModel, texts: Sequence[str]) -> list[str]:
        options = dict(self.decode_options)
        extra = self.approved.hits(texts) if self.approved is not None else None
        if extra and any(extra):
            options["extra"] = extra  # answers an admin approved, for the model to consider
        if len(texts) > 1 or "extra" in options:
            raw = model.reply_many(list(texts), **options)
        else:
            raw = [model.reply(t, **options) for t in texts]
        return [fit_message(r if isinstance(r, str) else str(r)) for r in raw]

    def generate_each(self, model: ReplyModel, texts: Sequence[str]) -> list[str | Exception]:
        """Like :meth:`generate`, but a failing batch is retried one message at a time, so
        one message the model chokes on fails alone (its exception is returned in its place)."""
        try:
            return list(self.generate(model, texts))
        except ModelClosed:
            raise
        except Exception as exc:
            if len(texts) == 1:
                return [exc]
        logger.warning("the model failed on a batch of %d; answering one at a time", len(texts))
        out: list[str | Exception] = []
        for text in texts:
            try:
                out.append(self.generate(model, [text])[0])
            except ModelClosed:
                raise
            except Exception as exc:  # reported to the caller of respond()
                out.append(exc)
        return out

    def reload(self, path: Path | None = None) -> str:
        """Load the checkpoint again and swap it in atomically; returns the new version.

        Raises whatever the loader raises (``CheckpointError``); the old model keeps serving.
        """
        if self.load_model is None:
            raise RuntimeError("this service was built without a model loader")
        path = Path(path or self.model_path or "")
        with self._reload_lock:
            model = serving(self.load_model(path))
            self.generate(model, ["你好"])  # fail here, not on the next user message
            old, self.model = self.model, model
            self.model_path = path
        old.close()  # worker processes stop after the batches they are answering
        logger.info("model reloaded from %s: %s -> %s", path, old.version, model.version)
        return model.version

    def close(self) -> None:
        self.model.close()

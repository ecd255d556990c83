"""``xianliao quickstart``: the whole product on a fresh machine in one command.

Trains a small model on the Chinese chatterbot-corpus data that pip installed and the
project's own everyday exchanges (plus any ``--corpus`` given) when ``MODEL_PATH`` does not exist yet, then runs the Telegram bot when
``TELEGRAM_BOT_TOKEN`` is set, else the terminal chat (same service, same logging).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# How the quickstart model is served (recorded in its checkpoint; the other options are the
# release's defaults). fp32 on CPU (small enough to be fast, and int8 lost in blind judging):
# section 29. It does not propose replies of its own (generate false: after 3 minutes they are
# word salad) but judges the index's answers, those to questions at least 0.3 alike
# (min_similarity); where none is, it says it cannot answer yet (section 30). Since session 14
# it judges them as the default does: the similarity weight 24 and the trust ramp (it had 8 and
# full trust; with ~3,600 exchanges it then picked far ones too often) and the neutral-question
# term (mmi_weight 1; it had 0, chosen while it still generated, when the term favoured the
# nonsense it sampled): bench/RESULTS.md section 33.
QUICKSTART_SERVING = {
    "generate": False,
    "min_similarity": 0.3,
    "int8": False,
}


def _build_index(corpora: list[str], model_path: Path) -> None:
    """The reply index over every pair of the corpora (a first bot has few, so none is held
    out), beside the model: answers that people wrote, judged by the model."""
    from xianliao.model.reply_index import default_index_path
    from xianliao.training.index import build

    path = default_index_path(model_path)
    stats = build(corpora, path, valid_permille=0)
    print(f"Reply index ready: {path} ({stats.pairs_indexed} answers)", file=sys.stderr)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="xianliao quickstart", description=__doc__)
    p.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="CORPUS",
        help="extra corpus to train on (repeatable; see 'xianliao prepare --help')",
    )
    p.add_argument("--minutes", type=float, default=3.0, help="training budget (default 3)")
    p.add_argument("--steps", type=int, default=3000, help="most training steps (default 3000)")
    p.add_argument("--retrain", action="store_true", help="train even if MODEL_PATH exists")
    p.add_argument("--train-only", action="store_true", help="train, then stop (no chat)")
    p.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    a = p.parse_args(argv)

    from xianliao.bot.config import read_settings

    settings = read_settings(a.env_file, "xianliao quickstart")
    if settings is None:
        return 2
    model_path = Path(settings.model_path)
    if a.retrain or not model_path.exists():
        from xianliao.training.corpus import EVERYDAY_CORPUS, CorpusError
        from xianliao.training.prepare import PrepareConfig, prepare
        from xianliao.training.train import TrainConfig, train

        data_dir = Path("data") / "quickstart"
        corpora = ["chatterbot:chinese", str(EVERYDAY_CORPUS), *a.corpus]
        print(f"Preparing {', '.join(corpora)} -> {data_dir}", file=sys.stderr)
        try:
            prepare(corpora, data_dir, PrepareConfig(min_freq=1, valid_permille=20), progress=False)
        except (CorpusError, OSError) as exc:
            print(f"xianliao quickstart: {exc}", file=sys.stderr)
            return 1
        print(
            f"Training a small model for up to {a.minutes:g} minutes -> {model_path.parent} "
            "(Ctrl+C stops early and keeps the model)",
            file=sys.stderr,
        )
        cfg = TrainConfig(
            steps=a.steps,
            minutes=a.minutes,
            batch_size=64,
            lr=3e-3,
            eval_every=250,
            model={"emb_size": 128, "hidden_size": 256},
            both_directions=True,  # so the model can also judge replies read backwards
        )
        from xianliao.model.checkpoint import export_for_inference

        result = train([(str(data_dir), 1.0)], model_path.parent, cfg)
        _build_index(corpora, model_path)
        # The final weights, not the best-validation ones: a corpus of ~1,100 pairs has a
        # held-out set of ~20 unrelated pairs, which prefers an early, barely trained model.
        export_for_inference(result.last_checkpoint, model_path, serving=QUICKSTART_SERVING)
        print(
            f"Model ready: {model_path} ({result.steps} steps, training loss {result.last_loss})",
            file=sys.stderr,
        )
    if a.train_only:
        return 0
    if settings.token():
        from xianliao.bot.app import main as bot_main

        return bot_main(["--env-file", a.env_file])
    print(
        "TELEGRAM_BOT_TOKEN is not set: opening the terminal chat (put the token in .env "
        "to run the Telegram bot).",
        file=sys.stderr,
    )
    from xianliao.bot.terminal import main as chat_main

    return chat_main(["--env-file", a.env_file])

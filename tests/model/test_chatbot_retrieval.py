"""Retrieval + generation on the real tiny model: the model proposes and judges, the index
widens the candidates, the filter has the last word."""

from __future__ import annotations

import pytest

from xianliao.model.chatbot import (
    FALLBACK_REPLY,
    UNKNOWN_REPLIES,
    ChatBot,
    trusted_offset,
    unknown_reply,
)
from xianliao.model.decode_options import DecodeOptions
from xianliao.model.reply_filter import ReplyFilter
from xianliao.model.reply_index import Hit, ReplyIndex
from xianliao.model.text import Tokenizer

TOK = Tokenizer()
GREEDY = {"strategy": "greedy"}


def _index(pairs) -> ReplyIndex:
    return ReplyIndex.memory((TOK.tokenize(q), a, "corpus") for q, a in pairs)


@pytest.fixture
def bot(tiny_checkpoint):
    return ChatBot.load(tiny_checkpoint, threads=1)


def test_a_message_like_an_indexed_question_gets_its_answer(bot):
    bot.index = _index([("今天星期几", "我只会煮面"), ("你好", "下次再聊")])
    # 今天星期几 is nothing the model learnt; its indexed answer wins on similarity ...
    # (generate_until 0: the model's own reply is a candidate, whatever the lead)
    assert bot.reply("今天星期几", **GREEDY, similarity_weight=50, generate_until=0) == "我只会煮面"
    # ... and without the similarity term the model's judgement decides: for 你好 it knows
    # its answer by heart and prefers it to the indexed one.
    assert bot.reply("你好", **GREEDY, similarity_weight=0) == "你好,很高兴认识你"


def test_without_a_matching_question_the_reply_is_generated(bot):
    generated = bot.reply("我好累", **GREEDY)
    bot.index = _index([("量子力学难吗", "很难")])
    assert bot.reply("我好累", **GREEDY) == generated == "早点休息吧"
    assert bot.reply("我好累", **GREEDY, retrieve=0, similarity_weight=50) == generated


def test_the_model_generates_only_while_no_retrieved_answer_leads_by_generate_until(
    bot, monkeypatch
):
    """A retrieved answer whose question alone gives it a lead of generate_until (weight x
    similarity + trusted offset) spares the model's own reply: it is never generated, for that
    message only. 0 = always generate."""
    from xianliao.model import chatbot

    asked: list[int] = []  # how many messages each generate() call proposed for
    real = chatbot.generate
    monkeypatch.setattr(
        chatbot, "generate", lambda m, src, *a, **k: asked.append(len(src)) or real(m, src, *a, **k)
    )
    bot.index = _index([("今天星期几", "我只会煮面")])
    weight = {**GREEDY, "similarity_weight": 50}  # same words: a lead of 50
    assert bot.reply("今天星期几", **weight, generate_until=40) == "我只会煮面" and asked == []
    assert bot.reply("今天星期几", **weight, generate_until=60) == "我只会煮面" and asked == [1]
    assert bot.reply("今天星期几", **weight, generate_until=0) == "我只会煮面" and asked == [1, 1]
    # one batch: only the message without a close question is generated for
    batch = bot.reply_many(["今天星期几", "我好累"], **weight, generate_until=40)
    assert asked == [1, 1, 1] and batch[0] == "我只会煮面" and batch[1] == "早点休息吧"
    # the lead counts the corpus's trusted offset too: 100 for the same words, whatever the weight
    bot.index.offsets = {"corpus": 100.0}
    assert bot.reply("今天星期几", **GREEDY, similarity_weight=0, generate_until=40) == "我只会煮面"
    assert asked == [1, 1, 1]


def test_approved_answers_to_the_same_words_are_sent_others_weighed(bot):
    same = [[Hit("你 好", "我只会煮面", 0.0, "approved", similarity=1.0)]]
    assert bot.reply_many(["你好!"], extra=same, **GREEDY)[0] == "我只会煮面"
    like = [[Hit("你 好 呀", "我只会煮面", 0.0, "approved", similarity=0.8)]]
    weighed = {**GREEDY, "approved_weight": 100, "generate_until": 0}  # beside the model's
    assert bot.reply_many(["你好"], extra=like, **weighed)[0] == "我只会煮面"
    assert (
        bot.reply_many(["你好"], extra=like, **GREEDY, approved_weight=0, similarity_weight=0)[0]
        == "你好,很高兴认识你"
    )


def test_the_blocklist_blocks_generated_retrieved_and_approved_replies(bot):
    bot.filter = ReplyFilter(["闲聊", "煮面"])
    # generated: the model's own answer to 你叫什么名字 is 我叫闲聊
    assert "闲聊" not in bot.reply("你叫什么名字", **GREEDY)
    assert "闲聊" not in bot.reply("你叫什么名字", strategy="beam")
    # retrieved: the blocked answer is never sent, the next best one is
    bot.index = _index([("今天星期几", "我只会煮面"), ("今天星期几", "下次再聊")])
    assert bot.reply("今天星期几", **GREEDY, similarity_weight=50) == "下次再聊"
    # approved
    extra = [[Hit("你 好", "我只会煮面", 0.0, "approved", similarity=1.0)]]
    assert "煮面" not in bot.reply_many(["你好"], extra=extra, **GREEDY)[0]


def test_nothing_sendable_gives_the_fallback(bot):
    bot.filter = ReplyFilter(["很高兴认识你"])
    reply = bot.reply("你好", **GREEDY)
    assert "很高兴认识你" not in reply and reply.strip()
    assert bot.reply("", **GREEDY) == FALLBACK_REPLY


def test_bidi_weight_on_a_one_way_model_is_an_error(bot):
    assert not bot.both_directions  # the tiny model is trained one way
    with pytest.raises(ValueError, match="--both-directions"):
        bot.reply("你好", bidi_weight=1.0)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"strategy": "nope"}, "strategy must be one of"),
        ({"beam_size": 0}, "beam_size must be a whole number >= 1"),
        ({"retrieve": -1}, "retrieve must be a whole number >= 0"),
        ({"max_len": 5, "min_len": 9}, "min_len (9) must not exceed max_len (5)"),
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"similarity_weight": -1}, "similarity_weight must be a number >= 0"),
        ({"guidance": 3, "strategy": "greedy"}, "guidance does nothing with strategy greedy"),
        ({"colour": "red"}, "unknown decoding options: colour"),
        ({"num_samples": "8"}, "num_samples must be a whole number"),
        ({"trust_from": 1.5}, "trust_from must be a number in [0, 1]"),
        ({"min_similarity": -0.1}, "min_similarity must be a number in [0, 1]"),
        ({"generate": "no"}, "generate must be true or false"),
        ({"generate_until": -1}, "generate_until must be a number >= 0"),
        ({"trust_from": 0.9, "trust_full": 0.5}, "trust_from (0.9) must not exceed trust_full"),
    ],
)
def test_invalid_decoding_options_are_one_line_errors(bot, options, says):
    with pytest.raises(ValueError) as err:
        bot.reply("你好", **options)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_corpus_offset_moves_its_answers_down(bot):
    bot.index = _index([("今天星期几", "我只会煮面"), ("今天星期几", "下次再聊")])
    first = bot.reply("今天星期几", **GREEDY, similarity_weight=50)
    other = {"我只会煮面": "下次再聊", "下次再聊": "我只会煮面"}[first]
    bot.index = ReplyIndex.memory(
        [(TOK.tokenize("今天星期几"), first, "noisy"), (TOK.tokenize("今天星期几"), other, "good")]
    )
    bot.index.offsets = {"noisy": -100.0}
    assert bot.reply("今天星期几", **GREEDY, similarity_weight=50) == other


def test_answers_too_long_to_send_do_not_use_up_the_retrieved_places(bot):
    """retrieve=2: the index's two best matches have answers longer than max_len; the short
    answer to the next most similar question is still among the candidates, and sent."""
    long_answer = "我只会煮面" * 10
    bot.index = _index(
        [
            ("今天星期几", long_answer),
            ("今天星期几", long_answer + "呀"),
            ("今天星期几呢", "下次再聊"),
        ]
    )
    opts = {**GREEDY, "retrieve": 2, "max_len": 8, "similarity_weight": 50}
    assert bot.reply("今天星期几", **opts) == "下次再聊"
    hits = bot.index.search(TOK.tokenize("今天星期几"), 6)
    cands = bot.candidates(hits, max_len=8, retrieve=1)
    assert [c.text for c in cands] == ["下次再聊"]


def test_a_trusted_corpus_counts_only_where_its_question_is_the_message(bot):
    """+100 for the "good" corpus decides for the same question, not for a message that only
    shares a word with it (similarity up to trust_from): there the model's own reply wins."""
    bot.index = ReplyIndex.memory([(TOK.tokenize("今天星期几"), "我只会煮面", "good")])
    bot.index.offsets = {"good": 100.0}
    competing = {**GREEDY, "generate_until": 0}  # the model's own reply is a candidate
    assert bot.reply("今天星期几", **competing, similarity_weight=0) == "我只会煮面"
    hit = bot.index.search(TOK.tokenize("今天我好累"))[0]
    assert 0 < hit.similarity < bot.options.trust_from
    assert bot.reply("今天我好累", **competing, similarity_weight=0) != "我只会煮面"
    # trusted whatever the match (both 0: as a checkpoint may record): it wins
    flat = {"trust_from": 0.0, "trust_full": 0.0}
    assert bot.reply("今天我好累", **competing, similarity_weight=0, **flat) == "我只会煮面"


@pytest.mark.parametrize(
    ("offset", "similarity", "ramp", "want"),
    [
        (-5.0, 0.1, (0.5, 0.8), -5.0),  # distrust counts in full
        (3.0, 0.3, (0.5, 0.8), 0.0),
        (3.0, 0.5, (0.5, 0.8), 0.0),
        (3.0, 0.65, (0.5, 0.8), 1.5),
        (3.0, 0.8, (0.5, 0.8), 3.0),
        (3.0, 1.0, (0.5, 0.8), 3.0),
        (3.0, 0.0, (0.0, 0.0), 3.0),  # both 0: always in full
        (3.0, 0.59, (0.6, 0.6), 0.0),  # a step
        (3.0, 0.6, (0.6, 0.6), 3.0),
    ],
)
def test_trusted_offset_grows_with_the_question_similarity(offset, similarity, ramp, want):
    opts = DecodeOptions(trust_from=ramp[0], trust_full=ramp[1])
    assert trusted_offset(offset, similarity, opts) == pytest.approx(want)


def test_without_generating_the_index_answers_or_the_bot_says_it_cannot_yet(bot):
    """generate false: the model only judges the index's answers (its own, preferred for 你好
    with similarity_weight 0, is not a candidate); min_similarity leaves out answers to
    questions too unlike the message, and with none left the reply is an honest line."""
    bot.index = _index([("你好", "下次再聊"), ("今天星期几", "我只会煮面")])
    assert bot.reply("你好", **GREEDY, similarity_weight=0) == "你好,很高兴认识你"
    quiet = {**GREEDY, "similarity_weight": 0, "generate": False}
    assert bot.reply("你好", **quiet) == "下次再聊"
    hit = bot.index.search(TOK.tokenize("今天我好累"))[0]
    assert 0 < hit.similarity < 0.5
    assert bot.reply("今天我好累", **quiet) == "我只会煮面"  # the only candidate
    floor = {**quiet, "min_similarity": 0.5}
    assert bot.reply("今天我好累", **floor) == unknown_reply("今天我好累") in UNKNOWN_REPLIES
    assert bot.reply("今天星期几", **floor) == "我只会煮面"  # the same words: similarity 1
    # an approved answer is held to the same floor, unless it is for the very same words
    like = [[Hit("今天 好累", "我只会煮面", 0.0, "approved", similarity=0.3)]]
    assert bot.reply_many(["今天我好累"], extra=like, **floor)[0] in UNKNOWN_REPLIES
    assert bot.reply_many(["今天我好累"], extra=like, **floor, retrieve=0)[0] != "我只会煮面"
    same = [[Hit("今天 我 好累", "下次再聊", 0.0, "approved", similarity=1.0)]]
    assert bot.reply_many(["今天我好累"], extra=same, **floor)[0] == "下次再聊"
    # one batch: a message with a close question, one without, one without words
    batch = bot.reply_many(["今天星期几", "今天我好累", ""], **floor)
    assert batch == ["我只会煮面", unknown_reply("今天我好累"), FALLBACK_REPLY]


def test_without_index_answers_the_model_generates_whatever_generate_says(bot):
    """No index served, or retrieve 0 (e.g. DECODE_OPTIONS over a checkpoint that records
    generate false): the model's own reply, not a refusal."""
    assert bot.index is None
    generated = bot.reply("我好累", **GREEDY)
    assert bot.reply("我好累", **GREEDY, generate=False, min_similarity=0.9) == generated
    bot.index = _index([("量子力学难吗", "很难")])
    assert bot.reply("我好累", **GREEDY, generate=False, retrieve=0) == generated


def test_the_unknown_reply_is_the_same_for_the_same_message():
    replies = {unknown_reply(f"消息{i}") for i in range(30)}
    assert replies == set(UNKNOWN_REPLIES)  # varied over messages ...
    assert unknown_reply("你好") == unknown_reply("你好")  # ... the same for one


def test_a_trusted_answer_is_kept_however_many_answers_share_its_question(bot, monkeypatch):
    """Forty corpus answers to the very same question and a trusted one to a question a little
    less alike: ``retrieve`` 3 keeps the answers with the best lead (similarity and trust)
    among all the search weighed, so the trusted one is judged. Ranked by similarity alone it
    had been left out (你是谁 got a corpus's joke)."""
    from xianliao.model import chatbot

    judged: list[str] = []
    real = chatbot.candidate_score

    def spy(c, model_score, opts):
        judged.append(c.text)
        return real(c, model_score, opts)

    monkeypatch.setattr(chatbot, "candidate_score", spy)
    rows = [(TOK.tokenize("你是谁"), f"我是小{i}号", "corpus") for i in range(40)]
    trusted = (TOK.tokenize("你是谁呀"), "我是闲聊", "good")  # a little less alike
    bot.index = ReplyIndex.memory([*rows, trusted])
    bot.index.offsets = {"good": 12.0}
    assert bot.index.search(TOK.tokenize("你是谁"), None)[-1].answer == "我是闲聊"
    bot.reply("你是谁", **GREEDY, retrieve=3, generate=False)
    assert len(judged) == 3 and "我是闲聊" in judged


def test_the_models_own_replies_join_the_retrieved_ones_once(bot):
    """A reply of the model's that an indexed answer already says counts as that answer (with
    its question's lead); a new one is added once; one the filter blocks is not."""
    bot.index = _index([("今天星期几", "早点休息吧"), ("你好", "下次再聊")])
    retrieved = bot.candidates(bot.index.search(TOK.tokenize("今天星期几"), None))
    same = bot.vocab.encode(TOK.tokenize("早点休息吧"))
    new = bot.vocab.encode(TOK.tokenize("你好"))
    blocked = bot.vocab.encode(TOK.tokenize("你好你好你好"))
    cands = bot._with_own(retrieved, [same, new, new, blocked, []])
    assert [(c.text, c.source) for c in cands] == [
        ("你好", "model"),
        *[(c.text, c.source) for c in retrieved],
    ]
    assert next(c for c in cands if c.text == "早点休息吧").similarity == pytest.approx(1.0)

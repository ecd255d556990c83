"""Scoring candidate replies with the model: how well each fits its question.

Used to pick among the model's own candidates (sample_rank, beam with ``rerank_beam``) and, in
``ChatBot``, among them and the answers of the reply index.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from xianliao.model.decode_options import DecodeOptions
from xianliao.model.search import Hypothesis, batch_inputs, length_penalty
from xianliao.model.seq2seq import Encoded, Seq2Seq
from xianliao.model.vocab import EOS_ID, GO_ID, PAD_ID, UNK_ID


def answer_batch(answers: list[list[int]], device) -> tuple[Tensor, Tensor]:
    """Teacher-forcing inputs for answers: GO + answer and answer + EOS, PAD-filled."""
    T = max(len(a) for a in answers) + 1
    tgt_in = torch.full((len(answers), T), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(answers), T), PAD_ID, dtype=torch.long)
    for i, a in enumerate(answers):
        tgt_in[i, 0] = GO_ID
        tgt_in[i, 1 : len(a) + 1] = torch.tensor(a, dtype=torch.long)
        tgt_out[i, : len(a)] = torch.tensor(a, dtype=torch.long)
        tgt_out[i, len(a)] = EOS_ID
    return tgt_in.to(device), tgt_out.to(device)


def candidate_scores(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    owners: list[int],
    answers: list[list[int]],
    opts: DecodeOptions,
    prior_cache: dict[tuple[int, ...], float] | None = None,
    encoded: Encoded | None = None,
) -> list[float]:
    """How well each non-empty candidate answer ``answers[i]`` fits its question
    ``src[owners[i]]``: the length-normalised log p(y|x) - w * log p(y|<unk>) (``mmi_weight``),
    plus ``bidi_weight`` * log p(x|y) / (|x| + 1). The second term is how likely the reply is
    whatever was asked (the model given an uninformative one-token question); the third, how
    well the reply leads back to the question (the model read backwards). ``prior_cache``
    keeps the second term of answers seen before (it does not depend on the question).
    ``encoded``: ``src`` already encoded (by the decoding that proposed candidates)."""
    rows = torch.tensor(owners, device=src.device)
    cache = prior_cache if prior_cache is not None else {}
    # The answers whose prior is not known yet are scored in the same decoder pass, for one
    # more question (the neutral one): one pass instead of two.
    todo = list(dict.fromkeys(tuple(a) for a in answers)) if opts.mmi_weight > 0 else []
    todo = [k for k in todo if k not in cache]
    if encoded is None:
        encoded = model.encode(src, src_len)
    all_rows = rows
    if todo:
        encoded = _with_neutral(model, encoded)
        neutral_rows = torch.full((len(todo),), src.shape[0], device=src.device)
        all_rows = torch.cat([rows, neutral_rows])
    tgt_in, tgt_out = answer_batch([*answers, *(list(k) for k in todo)], src.device)
    lp = model.sequence_logprobs(src, src_len, tgt_in, tgt_out, rows=all_rows, encoded=encoded)
    lp = lp.tolist()
    cond = lp[: len(answers)]
    prior = [0.0] * len(answers)
    if opts.mmi_weight > 0:
        if len(cache) + len(todo) > PRIOR_CACHE_SIZE:
            cache.clear()
        cache.update(zip(todo, lp[len(answers) :], strict=True))
        prior = [cache[tuple(a)] for a in answers]
    scores = [
        (c - opts.mmi_weight * p) / length_penalty(len(a) + 1, opts.length_penalty)
        for c, p, a in zip(cond, prior, answers, strict=True)
    ]
    if opts.bidi_weight > 0:  # each question made into a target once, then one row per reply
        questions = sorted(set(owners))
        where = {b: i for i, b in enumerate(questions)}
        q_in, q_out = answer_batch(
            [src[b, : int(src_len[b])].tolist() for b in questions], src.device
        )
        back_rows = torch.tensor([where[b] for b in owners], device=src.device)
        rev_src, rev_len = batch_inputs(answers, src.device)
        back = model.sequence_logprobs(rev_src, rev_len, q_in[back_rows], q_out[back_rows])
        per_token = (back / (src_len.to(back.device)[rows] + 1)).tolist()
        scores = [sc + opts.bidi_weight * lp for sc, lp in zip(scores, per_token, strict=True)]
    return scores


PRIOR_CACHE_SIZE = (
    200_000  # answers whose log p(y|<unk>) is remembered; bounded for a bot that runs for months
)


# The neutral question encoded, per model being served (the same every time; weights do not
# change while serving: a reload is a new model object).
_NEUTRAL: weakref.WeakKeyDictionary[Seq2Seq, Encoded] = weakref.WeakKeyDictionary()


def _with_neutral(model: Seq2Seq, encoded: Encoded) -> Encoded:
    """``encoded`` and, as one more question after them, the neutral one (a lone <unk>)."""
    device = encoded.memory.device
    neutral = _NEUTRAL.get(model) if torch.is_inference_mode_enabled() else None
    if neutral is None or neutral.memory.device != device:
        neutral = model.encode(
            torch.full((1, 1), UNK_ID, dtype=torch.long, device=device),
            torch.ones(1, dtype=torch.long),
        )
        if torch.is_inference_mode_enabled() and not model.training:
            _NEUTRAL[model] = neutral
    S = encoded.memory.shape[1]  # >= 1: the neutral question is padded to the others' width
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, S - 1))  # noqa: E731 - (1, 1, H) -> (1, S, H)
    mask = torch.zeros(1, S, dtype=torch.bool, device=device)
    mask[0, 0] = True
    return Encoded(
        torch.cat([encoded.memory, pad(neutral.memory)]),
        torch.cat([encoded.keys, pad(neutral.keys)]),
        torch.cat([encoded.mask, mask]),
        torch.cat([encoded.hidden, neutral.hidden], dim=1),
    )


def mmi_rerank(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    hyps: list[list[Hypothesis]],
    opts: DecodeOptions,
) -> list[list[int]]:
    """Pick, per input, the candidate with the best ``candidate_scores``."""
    flat = [(b, ids) for b, h in enumerate(hyps) for _, ids in h if ids]
    if not flat:
        return [h[0][1] if h else [] for h in hyps]
    scores = candidate_scores(
        model, src, src_len, [b for b, _ in flat], [ids for _, ids in flat], opts
    )
    best: dict[int, tuple[float, list[int]]] = {}
    for (b, ids), sc in zip(flat, scores, strict=True):
        if b not in best or sc > best[b][0]:
            best[b] = (sc, ids)
    return [best[b][1] if b in best else [] for b in range(len(hyps))]

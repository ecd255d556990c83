"""Decoding strategies: greedy decoding, top-k/top-p sampling and batched beam search.

Each takes an ``encode``-able batch (src (B, S), src_len (B,)) and returns, per input, token-id
lists (beam search: its finished hypotheses with their scores, best first). Run them under
``torch.inference_mode()``. Every strategy applies the same constraints (``constrain``: min
length, no <unk>, n-gram blocking) and, where ``opts.guidance`` asks for it, scores each token
against a neutral question (``guide``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from xianliao.model.decode_options import DecodeOptions
from xianliao.model.seq2seq import Encoded, Seq2Seq, Step
from xianliao.model.vocab import EOS_ID, GO_ID, PAD_ID, UNK_ID

NEG_INF = float("-inf")


def banned_by_ngram(history: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in ``history``."""
    if n <= 0 or len(history) < n - 1:
        return []
    if n == 1:
        return list(set(history))
    prefix = tuple(history[len(history) - n + 1 :])
    return [
        history[i + n - 1]
        for i in range(len(history) - n + 1)
        if tuple(history[i : i + n - 1]) == prefix
    ]


def constrain(
    logp: Tensor,
    histories: list[list[int]],
    step: int,
    opts: DecodeOptions,
    limit: int | None = None,
) -> Tensor:
    """Apply min length, UNK suppression and n-gram blocking to log-probs (N, V) in place.
    ``limit``: only the first ``limit`` columns are token ids (an adaptive softmax's head, whose
    further columns stand for its tail clusters)."""
    logp[:, PAD_ID] = NEG_INF
    logp[:, GO_ID] = NEG_INF
    if opts.suppress_unk:
        logp[:, UNK_ID] = NEG_INF
    if step < opts.min_len:
        logp[:, EOS_ID] = NEG_INF
    if opts.no_repeat_ngram > 0:
        for row, hist in enumerate(histories):
            banned = banned_by_ngram(hist, opts.no_repeat_ngram)
            if limit is not None:
                banned = [t for t in banned if t < limit]
            if banned:
                logp[row, banned] = NEG_INF
    return logp


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normaliser: a hypothesis's log-prob is divided by it."""
    return ((5.0 + length) / 6.0) ** alpha


def batch_inputs(
    id_lists: list[list[int]], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pad a list of id lists (each non-empty) into src (B, S) and src_len (B,)."""
    lengths = [len(x) for x in id_lists]
    src = torch.full((len(id_lists), max(lengths)), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(id_lists):
        src[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return src.to(device), torch.tensor(lengths, dtype=torch.long)


# ---- guidance ------------------------------------------------------------------------------
def encode_with_neutral(model: Seq2Seq, src: Tensor, src_len: Tensor) -> Encoded:
    """``model.encode`` of the B questions followed by B neutral one-token (<unk>) questions."""
    B, S = src.shape
    neutral = torch.full((B, S), PAD_ID, dtype=torch.long, device=src.device)
    neutral[:, 0] = UNK_ID
    both_len = torch.cat([src_len.cpu(), torch.ones(B, dtype=torch.long)])
    return model.encode(torch.cat([src, neutral]), both_len)


def guide(logp: Tensor, histories: list[list[int]], step: int, opts: DecodeOptions) -> Tensor:
    """Guided scores (N, V) from the log-probs of N questions stacked on those of N neutral
    questions (2N, V): g * log p(t|x) - (g - 1) * log p(t|<unk>) on the top_k tokens of the
    constrained p(t|x) (50 when top_k is 0: guidance must not lift words that this question
    makes unlikely anyway), -inf elsewhere. This is classifier-free guidance as for language
    models, i.e. MMI-antiLM applied per token."""
    N, g = len(histories), opts.guidance
    cond = constrain(logp[:N], histories, step, opts)
    top, idx = cond.topk(min(opts.top_k if opts.top_k > 0 else 50, cond.shape[-1]), dim=-1)
    mixed = (g * top - (g - 1) * logp[N:].gather(1, idx)).masked_fill(top == NEG_INF, NEG_INF)
    return torch.full_like(cond, NEG_INF).scatter_(1, idx, mixed)


# ---- one token at a time: greedy and sampling ----------------------------------------------
Choose = Callable[[Step, list[list[int]], int], Tensor]


def decode_loop(
    model: Seq2Seq, enc: Encoded, batch: int, opts: DecodeOptions, choose: Choose
) -> list[list[int]]:
    """Feed each of ``batch`` inputs the token ``choose(step, histories, t)`` picks for it
    (B,), until its first EOS or ``max_len``. ``enc`` may hold a multiple of ``batch`` rows
    (with guidance: the neutral questions after the real ones); every block of rows is fed the
    same tokens."""
    memory, keys, mask, hidden = enc
    copies = memory.shape[0] // batch
    tokens = torch.full((memory.shape[0],), GO_ID, dtype=torch.long, device=memory.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(opts.max_len):
        step = model.step(tokens, hidden, memory, keys, mask)
        hidden = step.hidden
        chosen = choose(step, out, t)
        tokens = chosen if copies == 1 else chosen.repeat(copies)
        for b, tok in enumerate(chosen.tolist()):
            if done[b]:
                continue
            if tok == EOS_ID:
                done[b] = True
            else:
                out[b].append(tok)
        if all(done):
            break
    return out


def greedy(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    opts: DecodeOptions,
    *,
    head_first: bool = True,
    encoded: Encoded | None = None,
) -> list[list[int]]:
    """Greedy decoding: at each step the most likely allowed token. ``head_first``: with an
    adaptive softmax, read its head first and score the tails only for the rows where a tail
    cluster wins (the same replies for less work). ``encoded``: ``src`` already encoded."""

    def choose(step: Step, histories: list[list[int]], t: int) -> Tensor:
        if model.adaptive is not None and head_first:
            return _head_first_argmax(model, step, histories, t, opts)
        return constrain(step.logits(), histories, t, opts).argmax(dim=-1)

    enc = encoded if encoded is not None else model.encode(src, src_len)
    return decode_loop(model, enc, src.shape[0], opts, choose)


def _head_first_argmax(
    model: Seq2Seq, step: Step, histories: list[list[int]], t: int, opts: DecodeOptions
) -> Tensor:
    """The argmax over the whole vocabulary, from the adaptive softmax's head where it can
    tell. The head scores the shortlist words and one entry per tail cluster in the same units
    (a tail word's probability is its cluster's times its share in the cluster), so when the
    best allowed head entry is a word, no tail word can beat it."""
    short = model.adaptive.shortlist_size
    tokens = constrain(step.head_logits(), histories, t, opts, limit=short).argmax(dim=-1)
    far = (tokens >= short).nonzero()[:, 0]  # a cluster won: score the full vocabulary
    if far.numel():
        full = constrain(step.log_probs(far), [histories[i] for i in far.tolist()], t, opts)
        tokens[far] = full.argmax(dim=-1)
    return tokens


def sample(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    opts: DecodeOptions,
    *,
    encoded: Encoded | None = None,
) -> list[list[int]]:
    """Sampling: each token is drawn from the ``top_k`` most likely allowed ones, within the
    smallest set holding ``top_p`` of their probability (nucleus), at ``temperature``; from
    the guided scores when ``guidance`` != 1. Reproducible with ``seed``. ``encoded``: ``src``
    already encoded (unguided sampling uses it)."""
    gen = torch.Generator(device=src.device)
    if opts.seed is not None:
        gen.manual_seed(opts.seed)
    else:
        gen.seed()
    guided = opts.guidance != 1.0

    def choose(step: Step, histories: list[list[int]], t: int) -> Tensor:
        if guided:
            return _draw(guide(step.log_probs(), histories, t, opts), opts, gen)
        return _draw(constrain(step.logits(), histories, t, opts), opts, gen)

    if guided:
        enc = encode_with_neutral(model, src, src_len)
    else:
        enc = encoded if encoded is not None else model.encode(src, src_len)
    return decode_loop(model, enc, src.shape[0], opts, choose)


def _draw(scores: Tensor, opts: DecodeOptions, gen: torch.Generator) -> Tensor:
    """One token per row of ``scores`` (log-probs up to a per-row constant). Only the top-k
    candidates are sorted and sampled from: the same distribution as masking the full
    vocabulary, without sorting it at every step."""
    k = opts.top_k if opts.top_k > 0 else scores.shape[-1]
    values, indices = torch.topk(scores / max(opts.temperature, 1e-5), min(k, scores.shape[-1]))
    if 0.0 < opts.top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > opts.top_p  # keep the first token always
        values = values.masked_fill(drop, NEG_INF)
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=gen)
    return indices.gather(-1, choice)[:, 0]


# ---- beam search ---------------------------------------------------------------------------
Hypothesis = tuple[float, list[int]]  # (length-normalised log-prob, ids)


@dataclass
class _Frontier:
    """The live beams after a step, K rows per input (score -inf where a row holds none)."""

    scores: Tensor  # (B, K) summed log-probs
    parents: Tensor  # (B*K,) the row each beam continues
    tokens: Tensor  # (B*K,) the token it adds
    histories: list[list[int]]  # (B*K) the ids so far


def beam_search(
    model: Seq2Seq, src: Tensor, src_len: Tensor, opts: DecodeOptions
) -> list[list[Hypothesis]]:
    """Batched beam search: B inputs x K beams decoded as one (B*K) batch. Each step extends
    every live beam by every allowed token and keeps the K best per input; a hypothesis ending
    in EOS is finished, scored by its length-normalised log-prob. An input stops once no live
    beam can beat its K best finished ones.

    Returns per input the finished hypotheses, best first."""
    B, K = src.shape[0], max(1, opts.beam_size)
    # With guidance, rows B*K .. 2*B*K are the same beams fed to neutral questions. Guided
    # scores can rise with length, so the early stop is then a heuristic.
    guided = opts.guidance != 1.0
    enc = encode_with_neutral(model, src, src_len) if guided else model.encode(src, src_len)
    rows = torch.arange(enc[0].shape[0], device=src.device).repeat_interleave(K)  # K per input
    memory, keys, mask = (t[rows] for t in enc[:3])
    hidden = enc[3][:, rows]  # (L, B*K or 2*B*K, H)
    scores = torch.full((B, K), NEG_INF, device=src.device)
    scores[:, 0] = 0.0  # only the first beam is live at the start
    histories: list[list[int]] = [[] for _ in range(B * K)]
    tokens = torch.full((B * K * (2 if guided else 1),), GO_ID, dtype=torch.long, device=src.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    closed = [False] * B
    for t in range(opts.max_len):
        step = model.step(tokens, hidden, memory, keys, mask)  # (B*K or 2*B*K) rows
        if guided:
            logp = guide(step.log_probs(), histories, t, opts)
        else:
            logp = constrain(step.log_probs(), histories, t, opts)
        V = logp.shape[-1]
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top = cand.topk(min(2 * K, K * V), dim=-1)  # (B, 2K): enough for K that do not end
        front = _advance(top.values, top.indices, V, histories, finished, closed, t, opts)
        if all(closed):
            break
        scores = front.scores
        scores[torch.tensor(closed, device=src.device)] = NEG_INF
        parents = torch.cat([front.parents, front.parents + B * K]) if guided else front.parents
        hidden = step.hidden[:, parents]
        tokens = front.tokens.repeat(2) if guided else front.tokens
        histories = front.histories
    for b in range(B):
        if not finished[b]:  # max_len reached with nothing finished: take the live beams
            for j in range(K):
                s = scores[b, j].item()
                if s != NEG_INF:
                    hist = histories[b * K + j]
                    finished[b].append((s / length_penalty(len(hist), opts.length_penalty), hist))
        finished[b].sort(key=lambda h: -h[0])
    return finished


def _advance(
    top_scores: Tensor,
    top_idx: Tensor,
    V: int,
    histories: list[list[int]],
    finished: list[list[Hypothesis]],
    closed: list[bool],
    t: int,
    opts: DecodeOptions,
) -> _Frontier:
    """From each open input's 2K best extensions (B, 2K) (index: beam * V + token): the
    finished ones into ``finished``, the K best others into the new frontier. Closes the inputs
    that are done (``closed``)."""
    B, K = len(finished), len(histories) // len(finished)
    device = top_scores.device
    front = _Frontier(
        scores=torch.full((B, K), NEG_INF, device=device),
        parents=torch.zeros(B * K, dtype=torch.long, device=device),
        tokens=torch.full((B * K,), EOS_ID, dtype=torch.long, device=device),
        histories=[[] for _ in range(B * K)],
    )
    for b, (row_s, row_i) in enumerate(zip(top_scores.tolist(), top_idx.tolist(), strict=True)):
        if closed[b]:
            continue
        live: list[float] = []
        for s, idx in zip(row_s, row_i, strict=True):
            if s == NEG_INF:
                break
            beam, tok = divmod(idx, V)
            parent = b * K + beam
            if tok == EOS_ID:
                hist = histories[parent]
                finished[b].append((s / length_penalty(len(hist) + 1, opts.length_penalty), hist))
                continue
            row = b * K + len(live)
            front.scores[b, len(live)] = s
            front.parents[row] = parent
            front.tokens[row] = tok
            front.histories[row] = histories[parent] + [tok]
            live.append(s)
            if len(live) == K:
                break
        closed[b] = _input_done(finished[b], live, t, K, opts)
    return front


def _input_done(done: list[Hypothesis], live: list[float], t: int, K: int, opts) -> bool:
    """Whether an input's search is over: no live beam, or K finished hypotheses (the K best
    are kept) and no live beam can beat the worst of them (the best a live beam can do is to
    stop now: scores only fall)."""
    if len(done) >= K:
        done.sort(key=lambda h: -h[0])
        del done[K:]
        best_live = max(
            (s / length_penalty(t + 2, opts.length_penalty) for s in live), default=NEG_INF
        )
        return best_live <= done[-1][0] or not live
    return not live

"""Decoding: greedy, batched beam search and top-k/top-p sampling.

All functions take an ``encode``-able batch (src (B, S), src_len (B,)) and return, per input, a
list of token-id lists (best first for beam search). Run them under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from xianliao.model.seq2seq import Seq2Seq
from xianliao.model.vocab import EOS_ID, GO_ID, PAD_ID, UNK_ID

NEG_INF = float("-inf")
STRATEGIES = ("greedy", "beam", "sample", "sample_rank")


@dataclass
class DecodeOptions:
    strategy: str = "sample"  # "greedy", "beam", "sample" or "sample_rank" (draw
    # ``num_samples`` replies by sampling, keep the one with the best MMI-reranked score: fewer
    # generic and more on-topic replies for ~10x the work, bench/RESULTS.md section 20)
    beam_size: int = 5  # beams per input (strategy "beam")
    max_len: int = 30  # most tokens in a reply
    min_len: int = 1  # fewest tokens before EOS is allowed
    length_penalty: float = 1.0  # GNMT alpha: ((5 + len) / 6) ** alpha divides the log-prob
    no_repeat_ngram: int = 2  # forbid repeating any n-gram of this size (0 = off)
    suppress_unk: bool = True  # never emit <unk>
    temperature: float = 0.8  # sampling temperature (strategies "sample" and "sample_rank")
    top_k: int = 20  # sample among the k most likely tokens (0 = no limit)
    top_p: float = 0.9  # ... and within the smallest set with this much probability
    seed: int | None = None  # sampling seed, for reproducible replies
    num_samples: int = 16  # candidates drawn per input (strategy "sample_rank")
    mmi_weight: float = 1.0  # sample_rank: rerank the candidates by
    # log p(y|x) - w * log p(y|<neutral>), which demotes replies that fit any question
    # (MMI-antiLM, Li et al. 2016); 0 = off
    bidi_weight: float = 0.0  # sample_rank: also add w * log p(x|y) per question token, how
    # well the reply leads back to the question (MMI-bidi, Li et al. 2016). Needs a model
    # trained with --both-directions; 0 = off
    guidance: float = 1.0  # all but greedy: score each token by log p(t|x) + (g - 1) *
    # (log p(t|x) - log p(t|<neutral>)) over the top_k tokens of p(t|x): g > 1 favours the words
    # this question makes likelier than any question would; ~2x the work (1 = off)
    rerank_beam: bool = False  # beam: rerank its n-best with mmi_weight and bidi_weight too
    # (off: beam search returns its most likely reply)
    retrieve: int = 10  # answers taken from the reply index (when one is served) for the
    # indexed questions most like the message; they and the model's own candidates are all
    # scored as in sample_rank, and the best is sent (0 = generation only)
    similarity_weight: float = 2.0  # added to a retrieved answer's score per unit of question
    # similarity (0..1: 1 for the same words), so answers to the same question come first
    approved_weight: float = 4.0  # more of the same for answers an admin approved or edited

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DecodeOptions:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decoding options: {', '.join(sorted(unknown))}")
        opts = cls(**d)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise ValueError (one line) for a value out of range or a setting that does nothing."""
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}"
            )
        for name, low in (
            ("beam_size", 1),
            ("max_len", 1),
            ("min_len", 0),
            ("top_k", 0),
            ("num_samples", 1),
            ("retrieve", 0),
            ("no_repeat_ngram", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, not {value!r}")
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        for name in (
            "temperature",
            "mmi_weight",
            "bidi_weight",
            "similarity_weight",
            "approved_weight",
            "length_penalty",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if self.guidance < 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = off), not {self.guidance}")
        if self.guidance != 1.0 and self.strategy == "greedy":
            raise ValueError("guidance does nothing with strategy greedy: use beam or sample")


def _banned_by_ngram(history: list[int], n: int) -> list[int]:
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


def _constrain(
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
            banned = _banned_by_ngram(hist, opts.no_repeat_ngram)
            if limit is not None:
                banned = [t for t in banned if t < limit]
            if banned:
                logp[row, banned] = NEG_INF
    return logp


def _token_by_token(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    opts: DecodeOptions,
    pick: Callable[[Tensor], Tensor],
    pick_state: Callable[[Tensor, Tensor, list[list[int]], int], Tensor] | None = None,
    *,
    guided: bool = False,
) -> list[list[int]]:
    """Decode the batch one token at a time; ``pick`` chooses tokens (B,) from the
    constrained scores (B, V): log-probs or logits. ``pick_state``, when given, chooses them
    instead from the attentional states (B, H), the step's first scores (``step_scores``),
    the histories and the step. ``guided``: the questions and as many neutral questions
    decode side by side in one batch, fed the same tokens, and ``pick`` chooses from the
    guided scores (``_guide``). Each input stops at its first EOS."""
    if guided:
        memory, keys, mask, hidden = _encode_with_neutral(model, src, src_len)
    else:
        memory, keys, mask, hidden = model.encode(src, src_len)
    B = src.shape[0]
    tokens = torch.full((memory.shape[0],), GO_ID, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(opts.max_len):
        # Scores up to a per-row constant: argmax, top-k and softmax do not need log-probs.
        if pick_state is not None:
            state, first, hidden = model.step_scores(tokens, hidden, memory, keys, mask)
            chosen = tokens = pick_state(state, first, out, step)
        elif guided:
            logp, hidden = model.step(tokens, hidden, memory, keys, mask)
            chosen = pick(_guide(logp, out, step, opts))
            tokens = torch.cat([chosen, chosen])
        else:
            scores, hidden = model.step(tokens, hidden, memory, keys, mask, normalize=False)
            chosen = tokens = pick(_constrain(scores, out, step, opts))
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


def greedy(model: Seq2Seq, src: Tensor, src_len: Tensor, opts: DecodeOptions) -> list[list[int]]:
    argmax = lambda logp: logp.argmax(dim=-1)  # noqa: E731
    if model.adaptive is None:
        return _token_by_token(model, src, src_len, opts, argmax)
    asm = model.adaptive
    short = asm.shortlist_size

    def pick_state(state: Tensor, head: Tensor, histories: list[list[int]], step: int) -> Tensor:
        # The adaptive softmax's head scores the shortlist words and one entry per tail
        # cluster, in the same units (a tail word's probability is its cluster's times its
        # share in the cluster). When the best allowed head entry is a word, no tail word can
        # beat it: the tails are skipped, and the result is the same as the full argmax.
        head = _constrain(head, histories, step, opts, limit=short)
        tokens = head.argmax(dim=-1)
        far = (tokens >= short).nonzero()[:, 0]  # a cluster won: score the full vocabulary
        if far.numel():
            rows = far.tolist()
            full = model.state_scores(state[far])
            full = _constrain(full, [histories[i] for i in rows], step, opts)
            tokens[far] = full.argmax(dim=-1)
        return tokens

    return _token_by_token(model, src, src_len, opts, argmax, pick_state)


def sample(model: Seq2Seq, src: Tensor, src_len: Tensor, opts: DecodeOptions) -> list[list[int]]:
    gen = torch.Generator(device=src.device)
    if opts.seed is not None:
        gen.manual_seed(opts.seed)
    else:
        gen.seed()

    def pick(logp: Tensor) -> Tensor:
        # Work on the top-k candidates only (sorted): the same distribution as masking the
        # full vocabulary, without sorting or sampling over 30k entries per step.
        k = opts.top_k if opts.top_k > 0 else logp.shape[-1]
        values, indices = torch.topk(logp / max(opts.temperature, 1e-5), min(k, logp.shape[-1]))
        if 0.0 < opts.top_p < 1.0:
            probs = torch.softmax(values, dim=-1)
            drop = probs.cumsum(dim=-1) - probs > opts.top_p  # keep the first token always
            values = values.masked_fill(drop, NEG_INF)
        choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=gen)
        return indices.gather(-1, choice)[:, 0]

    # With guidance: classifier-free guidance, as for language models (MMI-antiLM per token).
    return _token_by_token(model, src, src_len, opts, pick, guided=opts.guidance != 1.0)


def _encode_with_neutral(
    model: Seq2Seq, src: Tensor, src_len: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``model.encode`` of the B questions followed by B neutral one-token (<unk>) questions."""
    B, S = src.shape
    neutral = torch.full((B, S), PAD_ID, dtype=torch.long, device=src.device)
    neutral[:, 0] = UNK_ID
    both_len = torch.cat([src_len.cpu(), torch.ones(B, dtype=torch.long)])
    return model.encode(torch.cat([src, neutral]), both_len)


def _guide(logp: Tensor, histories: list[list[int]], step: int, opts: DecodeOptions) -> Tensor:
    """Guided scores (N, V) from the log-probs of N questions stacked on those of N neutral
    questions (2N, V): g * log p(t|x) - (g - 1) * log p(t|<unk>) on the top_k tokens of the
    constrained p(t|x) (50 when top_k is 0: guidance must not lift words that this question
    makes unlikely anyway), -inf elsewhere."""
    N, g = len(histories), opts.guidance
    cond = _constrain(logp[:N], histories, step, opts)
    top, idx = cond.topk(min(opts.top_k if opts.top_k > 0 else 50, cond.shape[-1]), dim=-1)
    mixed = (g * top - (g - 1) * logp[N:].gather(1, idx)).masked_fill(top == NEG_INF, NEG_INF)
    return torch.full_like(cond, NEG_INF).scatter_(1, idx, mixed)


def _length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    model: Seq2Seq, src: Tensor, src_len: Tensor, opts: DecodeOptions
) -> list[list[tuple[float, list[int]]]]:
    """Batched beam search: B inputs x K beams decoded as one (B*K) batch.

    Returns per input the finished hypotheses as (normalised score, ids), best first."""
    B, K = src.shape[0], max(1, opts.beam_size)
    # With guidance, rows B*K .. 2*B*K are the same beams fed to neutral questions. Guided
    # scores can rise with length, so the early stop below is then a heuristic.
    guided = opts.guidance != 1.0
    enc = _encode_with_neutral(model, src, src_len) if guided else model.encode(src, src_len)
    rows = torch.arange(enc[0].shape[0], device=src.device).repeat_interleave(K)  # K per input
    memory, keys, mask = (t[rows] for t in enc[:3])
    hidden = enc[3][:, rows]  # (L, B*K or 2*B*K, H)
    scores = torch.full((B, K), NEG_INF, device=src.device)
    scores[:, 0] = 0.0  # only the first beam is live at the start
    histories: list[list[int]] = [[] for _ in range(B * K)]
    tokens = torch.full((B * K * (2 if guided else 1),), GO_ID, dtype=torch.long, device=src.device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    closed = [False] * B
    for step in range(opts.max_len):
        logp, hidden = model.step(tokens, hidden, memory, keys, mask)  # (B*K or 2*B*K, V)
        if guided:
            logp = _guide(logp, histories, step, opts)
        else:
            logp = _constrain(logp, histories, step, opts)
        V = logp.shape[-1]
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=-1)  # (B, 2K)
        new_scores = torch.full((B, K), NEG_INF, device=src.device)
        parents = torch.zeros(B * K, dtype=torch.long, device=src.device)
        next_tokens = torch.full((B * K,), EOS_ID, dtype=torch.long, device=src.device)
        new_histories: list[list[int]] = [[] for _ in range(B * K)]
        for b, (row_s, row_i) in enumerate(zip(top_scores.tolist(), top_idx.tolist(), strict=True)):
            if closed[b]:
                continue
            slot = 0
            for s, idx in zip(row_s, row_i, strict=True):
                if s == NEG_INF:
                    break
                beam, tok = divmod(idx, V)
                parent = b * K + beam
                if tok == EOS_ID:
                    hist = histories[parent]
                    finished[b].append(
                        (s / _length_penalty(len(hist) + 1, opts.length_penalty), hist)
                    )
                    continue
                new_scores[b, slot] = s
                parents[b * K + slot] = parent
                next_tokens[b * K + slot] = tok
                new_histories[b * K + slot] = histories[parent] + [tok]
                slot += 1
                if slot == K:
                    break
            # Stop this input once K hypotheses are finished and no live beam can beat the worst
            # kept one (the best a live beam can do is stop now; scores only fall).
            if len(finished[b]) >= K:
                finished[b].sort(key=lambda h: -h[0])
                del finished[b][K:]
                best_live = max(
                    (
                        new_scores[b, j].item() / _length_penalty(step + 2, opts.length_penalty)
                        for j in range(slot)
                    ),
                    default=NEG_INF,
                )
                if best_live <= finished[b][-1][0] or slot == 0:
                    closed[b] = True
            elif slot == 0:
                closed[b] = True
        if all(closed):
            break
        scores = new_scores
        scores[torch.tensor(closed, device=src.device)] = NEG_INF
        if guided:
            hidden = hidden[:, torch.cat([parents, parents + B * K])]
            tokens = torch.cat([next_tokens, next_tokens])
        else:
            hidden = hidden[:, parents]
            tokens = next_tokens
        histories = new_histories
    for b in range(B):
        if not finished[b]:  # max_len reached with nothing finished: take the live beams
            for j in range(K):
                s = scores[b, j].item()
                if s != NEG_INF:
                    hist = histories[b * K + j]
                    finished[b].append((s / _length_penalty(len(hist), opts.length_penalty), hist))
        finished[b].sort(key=lambda h: -h[0])
    return finished


def batch_inputs(
    id_lists: list[list[int]], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pad a list of id lists (each non-empty) into src (B, S) and src_len (B,)."""
    lengths = [len(x) for x in id_lists]
    src = torch.full((len(id_lists), max(lengths)), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(id_lists):
        src[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return src.to(device), torch.tensor(lengths, dtype=torch.long)


def decode(model: Seq2Seq, id_lists: list[list[int]], opts: DecodeOptions) -> list[list[int]]:
    """Best reply ids for each input, by the strategy in ``opts``."""
    device = model.embedding.weight.device
    src, src_len = batch_inputs(id_lists, device)
    if opts.strategy == "greedy":
        return greedy(model, src, src_len, opts)
    if opts.strategy == "sample":
        return sample(model, src, src_len, opts)
    if opts.strategy == "sample_rank":
        hyps = [[(0.0, ids) for ids in c] for c in generate(model, src, src_len, opts)]
        return mmi_rerank(model, src, src_len, hyps, opts)
    hyps = beam_search(model, src, src_len, opts)
    if opts.rerank_beam:
        return mmi_rerank(model, src, src_len, hyps, opts)
    return [h[0][1] if h else [] for h in hyps]


def _answer_batch(answers: list[list[int]], device) -> tuple[Tensor, Tensor]:
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
) -> list[float]:
    """How well each non-empty candidate answer ``answers[i]`` fits its question
    ``src[owners[i]]``: the length-normalised log p(y|x) - w * log p(y|<unk>) (``mmi_weight``),
    plus ``bidi_weight`` * log p(x|y) / (|x| + 1). The second term is how likely the reply is
    whatever was asked (the model given an uninformative one-token question); the third, how
    well the reply leads back to the question (the model read backwards). ``prior_cache``
    keeps the second term of answers seen before (it does not depend on the question)."""
    rows = torch.tensor(owners, device=src.device)
    tgt_in, tgt_out = _answer_batch(answers, src.device)
    cond = model.sequence_logprobs(src, src_len, tgt_in, tgt_out, rows=rows).tolist()
    prior = [0.0] * len(answers)
    if opts.mmi_weight > 0:
        prior = _priors(model, answers, prior_cache if prior_cache is not None else {})
    scores = [
        (c - opts.mmi_weight * p) / _length_penalty(len(a) + 1, opts.length_penalty)
        for c, p, a in zip(cond, prior, answers, strict=True)
    ]
    if opts.bidi_weight > 0:  # each question made into a target once, then one row per reply
        questions = sorted(set(owners))
        where = {b: i for i, b in enumerate(questions)}
        q_in, q_out = _answer_batch(
            [src[b, : int(src_len[b])].tolist() for b in questions], src.device
        )
        back_rows = torch.tensor([where[b] for b in owners], device=src.device)
        rev_src, rev_len = batch_inputs(answers, src.device)
        back = model.sequence_logprobs(rev_src, rev_len, q_in[back_rows], q_out[back_rows])
        per_token = (back / (src_len.to(back.device)[rows] + 1)).tolist()
        scores = [sc + opts.bidi_weight * lp for sc, lp in zip(scores, per_token, strict=True)]
    return scores


PRIOR_CACHE_SIZE = 200_000  # answers whose log p(y|<unk>) is remembered (~100 bytes each)


def _priors(
    model: Seq2Seq, answers: list[list[int]], cache: dict[tuple[int, ...], float]
) -> list[float]:
    """log p(answer | <unk>) of each answer, from ``cache`` or computed in one batch."""
    keys = [tuple(a) for a in answers]
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    if todo:
        device = model.embedding.weight.device
        tgt_in, tgt_out = _answer_batch([list(k) for k in todo], device)
        neutral = torch.full((1, 1), UNK_ID, dtype=torch.long, device=device)
        lp = model.sequence_logprobs(
            neutral,
            torch.ones(1, dtype=torch.long),
            tgt_in,
            tgt_out,
            rows=torch.zeros(len(todo), dtype=torch.long, device=device),
        )
        if len(cache) + len(todo) > PRIOR_CACHE_SIZE:
            cache.clear()
        cache.update(zip(todo, lp.tolist(), strict=True))
    return [cache[k] for k in keys]


def mmi_rerank(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    hyps: list[list[tuple[float, list[int]]]],
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


def generate(
    model: Seq2Seq, src: Tensor, src_len: Tensor, opts: DecodeOptions
) -> list[list[list[int]]]:
    """The model's own candidate replies per input, for reranking with retrieved ones: beam
    search's finished hypotheses, ``num_samples`` distinct samples for sample_rank, else the
    strategy's one reply."""
    if opts.strategy == "beam":
        return [[ids for _, ids in h] for h in beam_search(model, src, src_len, opts)]
    if opts.strategy == "sample_rank":
        n, B = max(1, opts.num_samples), src.shape[0]
        drawn = sample(model, src.repeat_interleave(n, 0), src_len.repeat_interleave(n, 0), opts)
        return [list({tuple(x): x for x in drawn[b * n : (b + 1) * n]}.values()) for b in range(B)]
    one = (
        greedy(model, src, src_len, opts)
        if opts.strategy == "greedy"
        else sample(model, src, src_len, opts)
    )
    return [[ids] for ids in one]

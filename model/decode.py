"""Decoding: a reply's token ids for each question, by the strategy in ``DecodeOptions``.

The strategies themselves live in ``model/search.py`` (greedy, sampling, beam search) and the
candidate scoring in ``model/rerank.py``; this module is what the rest of the project calls.
Run under ``torch.inference_mode()``.
"""

from __future__ import annotations

from torch import Tensor

from xianliao.model.decode_options import STRATEGIES, DecodeOptions
from xianliao.model.rerank import PRIOR_CACHE_SIZE, candidate_scores, mmi_rerank
from xianliao.model.search import batch_inputs, beam_search, greedy, sample
from xianliao.model.seq2seq import Encoded, Seq2Seq

__all__ = [
    "PRIOR_CACHE_SIZE",
    "STRATEGIES",
    "DecodeOptions",
    "batch_inputs",
    "beam_search",
    "candidate_scores",
    "decode",
    "generate",
    "greedy",
    "mmi_rerank",
    "sample",
]


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


def generate(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    opts: DecodeOptions,
    *,
    encoded: Encoded | None = None,
) -> list[list[list[int]]]:
    """The model's own candidate replies per input, for reranking with retrieved ones: beam
    search's finished hypotheses, ``num_samples`` distinct samples for sample_rank, else the
    strategy's one reply. ``encoded``: ``src`` already encoded (spares greedy and sampling
    an encoder pass)."""
    if opts.strategy == "beam":
        return [[ids for _, ids in h] for h in beam_search(model, src, src_len, opts)]
    if opts.strategy == "sample_rank":
        n, B = max(1, opts.num_samples), src.shape[0]
        drawn = sample(model, src.repeat_interleave(n, 0), src_len.repeat_interleave(n, 0), opts)
        return [list({tuple(x): x for x in drawn[b * n : (b + 1) * n]}.values()) for b in range(B)]
    one = (
        greedy(model, src, src_len, opts, encoded=encoded)
        if opts.strategy == "greedy"
        else sample(model, src, src_len, opts, encoded=encoded)
    )
    return [[ids] for ids in one]

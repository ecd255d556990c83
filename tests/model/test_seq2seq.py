import pytest
import torch

from xianliao.model.decode import (
    DecodeOptions,
    batch_inputs,
    beam_search,
    decode,
    greedy,
)
from xianliao.model.search import banned_by_ngram
from xianliao.model.seq2seq import Seq2Seq, Seq2SeqConfig, default_cutoffs
from xianliao.model.vocab import EOS_ID, PAD_ID, UNK_ID


def _model(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=50, emb_size=16, hidden_size=24, dropout=0.0, **kw)
    return Seq2Seq(cfg).eval()


def test_padding_does_not_change_the_result():
    """A sequence alone and the same sequence padded inside a batch give the same loss and the
    same decoder states: masks and packing keep PAD out of everything."""
    m = _model()
    q = [5, 6, 7]
    src, src_len = batch_inputs([q])
    tgt_in, tgt_out = torch.tensor([[1, 8, 9]]), torch.tensor([[8, 9, EOS_ID]])
    alone = m(src, src_len, tgt_in, tgt_out)
    src2, src_len2 = batch_inputs([q, [5, 6, 7, 8, 9, 10, 11]])
    tgt_in2 = torch.tensor([[1, 8, 9, PAD_ID, PAD_ID], [1, 4, 4, 4, 4]])
    tgt_out2 = torch.tensor([[8, 9, EOS_ID, PAD_ID, PAD_ID], [PAD_ID] * 5])
    padded = m(src2, src_len2, tgt_in2, tgt_out2)  # second row is all PAD: ignored by the loss
    assert torch.allclose(alone, padded, atol=1e-5)
    mem, keys, mask, h = m.encode(src2, src_len2)
    assert mask.tolist()[0] == [True] * 3 + [False] * 4
    mem1, _, _, h1 = m.encode(src, src_len)
    assert torch.allclose(mem[0, :3], mem1[0], atol=1e-5)
    assert torch.allclose(h[:, 0], h1[:, 0], atol=1e-5)


def test_loss_ignores_pad_and_has_gradients_everywhere():
    m = _model().train()
    src, src_len = batch_inputs([[5, 6], [7, 8, 9]])
    loss = m(
        src,
        src_len,
        torch.tensor([[1, 10, 0], [1, 11, 12]]),
        torch.tensor([[10, EOS_ID, 0], [11, 12, EOS_ID]]),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad), [
        n for n, p in m.named_parameters() if p.grad is None
    ]


def test_adaptive_softmax_step_gives_log_probs():
    m = _model(adaptive_cutoffs=[10, 30])
    src, src_len = batch_inputs([[5, 6, 7]])
    mem, keys, mask, h = m.encode(src, src_len)
    logp = m.step(torch.tensor([1]), h, mem, keys, mask).log_probs()
    assert logp.shape == (1, 50)
    assert torch.allclose(logp.exp().sum(), torch.tensor(1.0), atol=1e-4)
    assert default_cutoffs(3000) == [] and default_cutoffs(30000) == [2000, 8000]


def test_folded_output_layer_matches_training_logits():
    torch.manual_seed(0)
    m = Seq2Seq(Seq2SeqConfig(vocab_size=50, emb_size=24, hidden_size=16, dropout=0.0)).eval()
    src, src_len = batch_inputs([[5, 6, 7]])
    mem, keys, mask, h = m.encode(src, src_len)
    before = m.step(torch.tensor([1]), h, mem, keys, mask).log_probs()
    m.prepare_for_inference()
    assert m._fast.out is not None  # hidden <= emb: folded into one Linear
    after = m.step(torch.tensor([1]), h, mem, keys, mask).log_probs()
    assert torch.allclose(before, after, atol=1e-4)
    wide = _model().prepare_for_inference()  # hidden > emb: folding would be more work
    assert wide._fast.out is None


def test_beam_width_one_equals_greedy():
    for seed in range(3):
        torch.manual_seed(seed)
        m = Seq2Seq(Seq2SeqConfig(vocab_size=40, emb_size=16, hidden_size=16, dropout=0.0)).eval()
        inputs = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
        opts = DecodeOptions(strategy="greedy", max_len=12, no_repeat_ngram=0, length_penalty=0.0)
        g = decode(m, inputs, opts)
        b = decode(
            m, inputs, DecodeOptions(**{**opts.to_dict(), "strategy": "beam", "beam_size": 1})
        )
        assert g == b


def test_beam_finds_at_least_as_likely_replies_as_greedy():
    torch.manual_seed(1)
    m = Seq2Seq(Seq2SeqConfig(vocab_size=30, emb_size=16, hidden_size=16, dropout=0.0)).eval()
    opts = DecodeOptions(max_len=8, no_repeat_ngram=0, length_penalty=0.0, min_len=1)
    src, src_len = batch_inputs([[5, 6, 7]])

    def logprob(ids):
        tgt_in = torch.tensor([[1, *ids]])
        tgt_out = torch.tensor([[*ids, EOS_ID]])
        return -m(src, src_len, tgt_in, tgt_out).item() * (len(ids) + 1)

    g = greedy(m, src, src_len, opts)[0]
    best = beam_search(m, src, src_len, DecodeOptions(**{**opts.to_dict(), "beam_size": 5}))[0]
    if len(g) < opts.max_len:  # greedy finished: beam's best is at least as likely
        assert logprob(best[0][1]) >= logprob(g) - 1e-4


def test_constraints_unk_min_len_and_ngram_blocking():
    assert sorted(banned_by_ngram([1, 2, 3, 1], 2)) == [2]
    assert banned_by_ngram([1, 2, 3], 3) == []
    m = _model()
    with torch.no_grad():  # make UNK and EOS overwhelmingly likely
        m.out_bias[UNK_ID] = 50.0
        m.out_bias[EOS_ID] = 40.0
    for strategy in ("greedy", "beam", "sample"):
        opts = DecodeOptions(strategy=strategy, min_len=3, max_len=6, seed=0, no_repeat_ngram=1)
        out = decode(m, [[5, 6]], opts)[0]
        assert UNK_ID not in out
        assert len(out) >= 3
        assert len(set(out)) == len(out)  # no token repeated (1-gram blocking)


def test_sampling_is_reproducible_with_a_seed():
    m = _model()
    opts = DecodeOptions(strategy="sample", seed=3, temperature=1.5, top_k=0, top_p=1.0)
    assert decode(m, [[5, 6]], opts) == decode(m, [[5, 6]], opts)


def test_sequence_logprobs_match_the_training_loss():
    for cutoffs in ([], [10, 30]):
        m = _model(adaptive_cutoffs=cutoffs)
        src, src_len = batch_inputs([[5, 6, 7]])
        tgt_in, tgt_out = torch.tensor([[1, 8, 9]]), torch.tensor([[8, 9, EOS_ID]])
        loss = m(src, src_len, tgt_in, tgt_out)
        lp = m.sequence_logprobs(src, src_len, tgt_in, tgt_out)
        assert torch.allclose(lp, -loss * 3, atol=1e-4)


def test_sample_rank_and_mmi_rerank_keep_the_constraints():
    m = _model()
    with torch.no_grad():
        m.out_bias[UNK_ID] = 50.0
    for opts in (
        DecodeOptions(strategy="sample_rank", num_samples=4, mmi_weight=0.5, seed=1, min_len=2),
        DecodeOptions(strategy="beam", beam_size=4, mmi_weight=0.5, min_len=2, rerank_beam=True),
    ):
        outs = decode(m, [[5, 6], [7, 8, 9]], opts)
        assert len(outs) == 2
        assert all(len(o) >= 2 and UNK_ID not in o for o in outs)
    opts = DecodeOptions(strategy="sample_rank", num_samples=4, seed=3)
    assert decode(m, [[5, 6]], opts) == decode(m, [[5, 6]], opts)


def test_bidi_rerank_adds_the_way_back_per_question_token():
    """MMI-bidi: each candidate scores log p(y|x) / lp(|y|+1) + w * log p(x|y) / (|x| + 1), the
    second term from the same model read backwards. Checked against scores computed here, and
    a large weight has to change the pick of a model whose two directions disagree."""
    from xianliao.model.decode import mmi_rerank
    from xianliao.model.rerank import answer_batch
    from xianliao.model.search import length_penalty

    m = _model()
    question = [5, 6, 7]
    cands = [[8, 9], [10, 11, 12], [13], [14, 15, 16, 17], [18, 19]]
    src, src_len = batch_inputs([question])

    def expected(w: float) -> list[int]:
        tgt_in, tgt_out = answer_batch(cands, "cpu")
        fwd = m.sequence_logprobs(
            src.repeat(len(cands), 1), src_len.repeat(len(cands)), tgt_in, tgt_out
        )
        rs, rl = batch_inputs(cands)
        q_in, q_out = answer_batch([question] * len(cands), "cpu")
        back = m.sequence_logprobs(rs, rl, q_in, q_out)
        scores = [
            f / length_penalty(len(c) + 1, 1.0) + w * b / (len(question) + 1)
            for f, b, c in zip(fwd.tolist(), back.tolist(), cands, strict=True)
        ]
        return cands[max(range(len(cands)), key=scores.__getitem__)]

    hyps = [[(0.0, c) for c in cands]]
    with torch.no_grad():
        picks = {
            w: mmi_rerank(m, src, src_len, hyps, DecodeOptions(bidi_weight=w, mmi_weight=0.0))[0]
            for w in (0.0, 1.0, 1000.0)
        }
        assert all(picks[w] == expected(w) for w in picks)
    assert picks[0.0] != picks[1000.0]


def test_bf16_autocast_trains_with_the_adaptive_softmax():
    m = _model(adaptive_cutoffs=[10, 30]).train()
    src, src_len = batch_inputs([[5, 6, 7], [8, 9]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(
            src,
            src_len,
            torch.tensor([[1, 10, 40], [1, 11, 0]]),
            torch.tensor([[10, 40, EOS_ID], [11, EOS_ID, 0]]),
        )
    loss.backward()
    assert torch.isfinite(loss) and m.adaptive.head.weight.grad is not None


def test_quantizing_keeps_the_adaptive_softmax_tails_in_fp32():
    m = _model(adaptive_cutoffs=[10, 30])
    src, src_len = batch_inputs([[5, 6, 7]])
    x = torch.randn(4, 16)
    with torch.inference_mode():
        ref = m.adaptive.log_prob(x)
    m.prepare_for_inference(quantize=True)
    assert type(m.adaptive.head) is not torch.nn.Linear  # the head is int8
    assert all(type(t[1]) is torch.nn.Linear for t in m.adaptive.tail)  # the tails are not
    assert type(m.encoder) is not torch.nn.GRU  # the GRUs are quantized
    with torch.inference_mode():
        got = m.adaptive.log_prob(x)
        assert len(decode(m, [[5, 6, 7]], DecodeOptions(strategy="greedy", max_len=5))) == 1
    assert torch.allclose(got.exp().sum(dim=1), torch.ones(4), atol=1e-4)  # still normalised
    assert (got - ref).abs().max() < 0.1  # and close to fp32


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy():
    torch.manual_seed(4)
    m = Seq2Seq(Seq2SeqConfig(vocab_size=40, emb_size=16, hidden_size=16, dropout=0.0)).eval()
    inputs = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
    g = decode(m, inputs, DecodeOptions(strategy="greedy", max_len=10))
    for over in ({"top_k": 1}, {"top_k": 0, "top_p": 1e-6}, {"top_k": 5, "top_p": 1e-6}):
        opts = DecodeOptions(**{"strategy": "sample", "max_len": 10, "seed": 9, **over})
        assert decode(m, inputs, opts) == g, over


def test_adaptive_greedy_skips_the_tails_without_changing_the_reply():
    """Greedy decoding with an adaptive softmax scores the tails only when a tail cluster beats
    every allowed shortlist word; the replies equal the argmax over the full vocabulary, also
    under n-gram blocking and min length, and tail words still come out."""
    m = _model(adaptive_cutoffs=[10, 30])
    head = torch.nn.Linear(16, 12)  # the head with a bias, to make its two cluster entries
    with torch.no_grad():  # win now and then
        head.weight.copy_(m.adaptive.head.weight)
        head.bias.zero_()
        head.bias[10:] = 3.0
    m.adaptive.head = head
    inputs = [[5, 6, 7], [9, 10], [11, 12, 13, 14], [40, 41], [20], [33, 34, 35, 36, 37]]
    src, src_len = batch_inputs(inputs)
    seen_tail = False
    for ngram, min_len in ((0, 1), (1, 3), (2, 1)):
        opts = DecodeOptions(strategy="greedy", max_len=12, no_repeat_ngram=ngram, min_len=min_len)
        fast = greedy(m, src, src_len, opts)
        full = greedy(m, src, src_len, opts, head_first=False)  # argmax over all log-probs
        assert fast == full
        seen_tail |= any(t >= 10 for reply in fast for t in reply)
    assert seen_tail  # the fallback to the full vocabulary was exercised


def test_folded_adaptive_head_matches_the_training_path():
    m = _model(adaptive_cutoffs=[10, 30])
    state = torch.randn(5, 24)
    inputs = [[5, 6, 7], [9, 10], [40, 41]]
    opts = DecodeOptions(strategy="greedy", max_len=8)
    with torch.inference_mode():
        ref = m.adaptive.head(m.out_proj(state))
        before = decode(m, inputs, opts)
    m.prepare_for_inference()
    assert m._fast.head is not None  # hidden 24 x head 12 is less work than 24x16 + 16x12
    with torch.inference_mode():
        assert torch.allclose(m._head_logits(state), ref, atol=1e-5)
        assert decode(m, inputs, opts) == before


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize(
    "sizes",
    [
        {"emb_size": 16, "hidden_size": 24},  # tied output, not folded
        {"emb_size": 24, "hidden_size": 16},  # tied output folded into one Linear
        {"emb_size": 16, "hidden_size": 24, "adaptive_cutoffs": [10, 30]},  # folded head
        {"emb_size": 16, "hidden_size": 16, "adaptive_cutoffs": [10, 30]},  # head not folded
        {"emb_size": 16, "hidden_size": 16, "tie_embeddings": False},  # untied output layer
    ],
)
def test_compiled_inference_decodes_exactly_like_eager(sizes, quantize):
    """prepare_for_inference compiles the encoder and the decoding step (TorchScript): the
    replies (every strategy, padded and unpadded batches) and the step's tensors must be the
    same as in eager mode."""

    def build(compile: bool) -> Seq2Seq:
        torch.manual_seed(0)
        m = Seq2Seq(Seq2SeqConfig(vocab_size=50, dropout=0.0, enc_layers=2, dec_layers=2, **sizes))
        return m.prepare_for_inference(quantize=quantize, compile=compile)

    eager, compiled = build(False), build(True)
    assert eager._fast.core is None and compiled._fast.core is not None
    for inputs in ([[5, 6, 7]], [[5, 6, 7], [9, 10], [11, 12, 13, 14]]):
        for opts in (
            DecodeOptions(strategy="greedy", max_len=10),
            DecodeOptions(strategy="beam", beam_size=3, max_len=10),
            DecodeOptions(strategy="sample", seed=3, max_len=10),
        ):
            with torch.inference_mode():
                assert decode(compiled, inputs, opts) == decode(eager, inputs, opts)
    src, src_len = batch_inputs([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode():
        enc_e, enc_c = eager.encode(src, src_len), compiled.encode(src, src_len)
        for a, b in zip(enc_e, enc_c, strict=True):
            assert torch.equal(a, b)
        tokens = torch.tensor([5, 6])

        def step_tensors(m: Seq2Seq, enc) -> tuple:
            step = m.step(tokens, enc.hidden, enc.memory, enc.keys, enc.mask)
            first = step.head_logits() if m.adaptive is not None else step.logits()
            return step.state, first, step.hidden

        for a, b in zip(step_tensors(eager, enc_e), step_tensors(compiled, enc_c), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    # the checkpoint format is untouched
    assert "_fast" not in str(list(compiled.state_dict()))
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_word_dropout_hides_answer_words_from_the_decoder_only_while_training():
    """word_dropout 1.0 feeds the decoder GO then <unk> for every answer word: the loss is then
    exactly that of an all-<unk> teacher-forcing input, PAD stays PAD; eval mode ignores it."""
    src, src_len = batch_inputs([[5, 6], [7, 8, 9]])
    tgt_in = torch.tensor([[1, 10, 11, PAD_ID], [1, 12, 13, 14]])
    tgt_out = torch.tensor([[10, 11, EOS_ID, PAD_ID], [12, 13, 14, EOS_ID]])
    hidden_in = torch.tensor([[1, UNK_ID, UNK_ID, PAD_ID], [1, UNK_ID, UNK_ID, UNK_ID]])
    plain = _model()
    dropped = _model(word_dropout=1.0)
    dropped.load_state_dict(plain.state_dict())
    dropped.train()  # dropout=0.0: training mode only switches word dropout on
    expect = plain(src, src_len, hidden_in, tgt_out)
    assert torch.allclose(dropped(src, src_len, tgt_in, tgt_out), expect, atol=1e-6)
    assert not torch.allclose(plain(src, src_len, tgt_in, tgt_out), expect, atol=1e-3)
    dropped.eval()
    assert torch.allclose(
        dropped(src, src_len, tgt_in, tgt_out), plain(src, src_len, tgt_in, tgt_out), atol=1e-6
    )
    for bad in (1.5, -0.2):
        with pytest.raises(ValueError, match="word dropout has to be between 0 and 1"):
            _model(word_dropout=bad)


def test_guided_sampling_draws_from_the_question_against_a_neutral_one():
    """Guidance g: each token comes from g * log p(t|x) - (g - 1) * log p(t|<unk>) over the
    top_k tokens of p(t|x). With a near-zero temperature the draw is that score's argmax,
    checked here against log-probs computed step by step; g = 1 is plain greedy, and a large g
    has to change some first token of a model whose two inputs disagree."""
    m = _model(adaptive_cutoffs=[10, 30])
    questions = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [20, 21]]

    def first_tokens(g: float, k: int) -> list[int]:
        opts = DecodeOptions(strategy="sample", guidance=g, top_k=k, top_p=1.0, temperature=1e-6)
        return [
            out[0]
            for out in decode(
                m, questions, DecodeOptions(**{**opts.to_dict(), "max_len": 1, "seed": 0})
            )
        ]

    def expected(g: float, k: int) -> list[int]:
        picks = []
        for q in questions:
            steps = []
            for src in ([q], [[UNK_ID]]):
                s, sl = batch_inputs(src)
                mem, keys, mask, h = m.encode(s, sl)
                steps.append(m.step(torch.tensor([1]), h, mem, keys, mask).log_probs()[0])
            cond, neutral = steps
            # PAD, GO and UNK are never drawn, EOS not before min_len (1)
            cond[[PAD_ID, 1, UNK_ID, EOS_ID]] = float("-inf")
            top = cond.topk(k).indices
            score = g * cond[top] - (g - 1) * neutral[top]
            picks.append(int(top[score.argmax()]))
        return picks

    with torch.inference_mode():
        greedy_first = [
            out[0] for out in decode(m, questions, DecodeOptions(strategy="greedy", max_len=1))
        ]
        assert first_tokens(1.0, 20) == greedy_first
        for g, k in ((2.0, 20), (50.0, 20), (50.0, 5)):
            assert first_tokens(g, k) == expected(g, k)
        assert first_tokens(50.0, 20) != greedy_first
        # whole replies keep the constraints and are reproducible with a seed
        opts = DecodeOptions(strategy="sample", guidance=2.0, seed=4, min_len=3, max_len=6)
        outs = decode(m, questions, opts)
        assert all(3 <= len(o) <= 6 and UNK_ID not in o for o in outs)
        assert decode(m, questions, opts) == outs
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        DecodeOptions.from_dict({"guidance": 0.5})


def test_guided_beam_search_finds_the_best_guided_reply():
    """Beam search with guidance scores each step by g * log p(t|x) - (g - 1) * log p(t|<unk>)
    over the top_k tokens of p(t|x). With top_k 3, 9 beams and three-token replies (EOS not
    allowed before), no reply is pruned: it must return the best of all 27 guided replies,
    found here by trying every one step by step (so the neutral questions' states must follow
    their beams)."""
    m = _model(adaptive_cutoffs=[10, 30])
    questions = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [20, 21]]
    g, k, length = 4.0, 3, 3
    banned = [PAD_ID, 1, UNK_ID, EOS_ID]

    def best_reply(q: list[int]) -> list[int]:
        enc = []
        for src in ([q], [[UNK_ID]]):
            s, sl = batch_inputs(src)
            enc.append(m.encode(s, sl))

        def search(token: int, hs: list, score: float, reply: list[int]) -> tuple:
            if len(reply) == length:
                return score, reply
            out, new = [], []
            for (mem, keys, mask, _), h in zip(enc, hs, strict=True):
                step = m.step(torch.tensor([token]), h, mem, keys, mask)
                out.append(step.log_probs()[0])
                new.append(step.hidden)
            cond, neutral = out
            cond[banned] = float("-inf")
            top = cond.topk(k).indices
            guided = g * cond[top] - (g - 1) * neutral[top]
            return max(
                search(t, new, score + float(sc), reply + [t])
                for t, sc in zip(top.tolist(), guided.tolist(), strict=True)
            )

        return search(1, [e[3] for e in enc], 0.0, [])[1]

    opts = DecodeOptions(
        strategy="beam",
        beam_size=k * k,
        top_k=k,
        guidance=g,
        min_len=length,
        max_len=length,
        no_repeat_ngram=0,
    )
    with torch.inference_mode():
        assert decode(m, questions, opts) == [best_reply(q) for q in questions]
        plain = decode(m, questions, DecodeOptions(**{**opts.to_dict(), "guidance": 1.0}))
        assert plain != decode(m, questions, opts)
        outs = decode(m, questions, DecodeOptions(strategy="beam", guidance=3.0, min_len=3))
        assert all(len(o) >= 3 and UNK_ID not in o for o in outs)


def test_preparing_silences_only_the_deprecations_of_our_own_calls():
    """TorchScript and torch.ao's int8 are kept on purpose (see model/inference.py): preparing a
    model emits none of their deprecation warnings, and leaves the warning filters as they
    were, so nothing else is silenced."""
    import warnings

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _model(enc_layers=2, dec_layers=2).prepare_for_inference(quantize=True)
        inner = list(warnings.filters)
    assert m._fast.core is not None  # TorchScript did compile
    assert [str(w.message) for w in caught if "deprecated" in str(w.message)] == []
    assert list(warnings.filters) == before
    assert inner[0][0] == "always"  # our filters were undone after each call, not left behind
    with pytest.warns(DeprecationWarning, match="torch.jit.script"):  # still there elsewhere
        torch.jit.script(torch.nn.Identity())


def test_candidate_scores_are_the_mmi_definition_with_or_without_a_remembered_prior():
    """log p(y|x) / lp(|y|+1) - w * log p(y|<unk>) / lp(|y|+1), for two questions of other
    lengths (padding) at once: the priors are scored in the same pass as the answers, then
    remembered; a second call that finds them remembered gives the same scores."""
    from xianliao.model.rerank import answer_batch, candidate_scores
    from xianliao.model.search import length_penalty

    m = _model()
    questions = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    owners = [0, 0, 1, 1, 1]
    cands = [[8, 9], [10, 11, 12], [13], [8, 9], [14, 15, 16, 17]]  # [8, 9]: for both
    src, src_len = batch_inputs(questions)
    opts = DecodeOptions(mmi_weight=0.7)
    with torch.no_grad():
        tgt_in, tgt_out = answer_batch(cands, "cpu")
        cond = m.sequence_logprobs(src[owners], src_len[owners], tgt_in, tgt_out)
        neutral = torch.full((len(cands), 1), UNK_ID)
        prior = m.sequence_logprobs(
            neutral, torch.ones(len(cands), dtype=torch.long), tgt_in, tgt_out
        )
        expected = [
            (c - 0.7 * p) / length_penalty(len(a) + 1, 1.0)
            for c, p, a in zip(cond.tolist(), prior.tolist(), cands, strict=True)
        ]
        cache: dict = {}
        first = candidate_scores(m, src, src_len, owners, cands, opts, prior_cache=cache)
        assert len(cache) == 4  # each distinct answer once
        again = candidate_scores(m, src, src_len, owners, cands, opts, prior_cache=cache)
    assert first == pytest.approx(expected, abs=1e-4)
    assert again == pytest.approx(expected, abs=1e-4)

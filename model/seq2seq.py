"""Attention seq2seq: batch-first bi-GRU encoder, GRU decoder with Luong (general) attention.

Training runs the decoder over the whole teacher-forced target in one GRU call and computes the
attention for all steps in one batched matmul: no Python loop over time steps. The output layer
runs only on non-padding positions and its weights are tied to the input embedding.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xianliao.model.vocab import GO_ID, PAD_ID, UNK_ID

logger = logging.getLogger(__name__)


@dataclass
class Seq2SeqConfig:
    vocab_size: int
    emb_size: int = 256  # word embedding size; also the output layer's input (tied weights)
    hidden_size: int = 384  # GRU size: encoder per direction, and decoder
    enc_layers: int = 1  # stacked bi-GRU layers in the encoder
    dec_layers: int = 1  # stacked GRU layers in the decoder
    dropout: float = 0.1  # on embeddings and on the attentional hidden state
    word_dropout: float = 0.0  # training only: this share of the answer words the decoder is
    # fed (teacher forcing) become <unk>, so it must lean on the question to predict the next
    # word instead of continuing its own text (word dropout, Bowman et al. 2016)
    tie_embeddings: bool = True  # output layer shares the embedding matrix (full softmax only)
    adaptive_cutoffs: list[int] = field(default_factory=list)  # adaptive softmax clusters
    # (torch.nn.AdaptiveLogSoftmaxWithLoss); empty = full softmax. Frequent words go in the
    # head, rare ones in cheaper, lower-dimensional tails: 5-10x less output-layer work.

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Seq2SeqConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _attention_input(dec_out: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """Luong attention for decoder outputs (B, T, H), all T steps in one matmul:
    [h_t; c_t] (B, T, 2H), the input of the ``combine`` layer. Shared by the eager model and
    the TorchScript core."""
    scores = torch.bmm(dec_out, keys.transpose(1, 2))  # (B, T, S)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    context = torch.bmm(torch.softmax(scores, dim=-1), memory)  # (B, T, H)
    return torch.cat([dec_out, context], dim=-1)


def _final_states(h_n: Tensor, layers: int, batch: int) -> Tensor:
    """The bi-GRU's final states (layers * 2, B, H) -> the top layer's, both directions
    side by side: (B, 2H)."""
    h_n = h_n.view(layers, 2, batch, -1)  # (L, dir, B, H)
    return torch.cat([h_n[-1, 0], h_n[-1, 1]], dim=-1)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if not 0.0 <= cfg.word_dropout <= 1.0:  # as nn.Dropout checks its own probability
            raise ValueError(f"word dropout has to be between 0 and 1, but got {cfg.word_dropout}")
        E, H = cfg.emb_size, cfg.hidden_size
        self.embedding = nn.Embedding(cfg.vocab_size, E, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.GRU(
            E,
            H,
            num_layers=cfg.enc_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0,
        )
        self.enc_proj = nn.Linear(2 * H, H)  # bi-GRU outputs -> attention memory
        self.bridge = nn.Linear(2 * H, H)  # final encoder states -> decoder initial state
        self.decoder = nn.GRU(
            E,
            H,
            num_layers=cfg.dec_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0,
        )
        self.attn_key = nn.Linear(H, H, bias=False)  # Luong "general" score: h_t^T W m_s
        self.combine = nn.Linear(2 * H, H)  # [h_t; c_t] -> attentional state
        self.out_proj = nn.Linear(H, E)  # attentional state -> embedding space
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        if cfg.adaptive_cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
                E, cfg.vocab_size, cutoffs=list(cfg.adaptive_cutoffs), div_value=4.0
            )
            self.out = None
        elif cfg.tie_embeddings:
            self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
            self.out = None
        else:
            self.out = nn.Linear(E, cfg.vocab_size)
        self._infer_out: nn.Module | None = None
        self._infer_head: nn.Module | None = None
        # The inference path compiled with TorchScript (``prepare_for_inference``); kept out of
        # the module tree (and so out of state_dict) on purpose.
        object.__setattr__(self, "_core", None)

    # ---- encoder ---------------------------------------------------------------------------
    def encode(
        self, src: Tensor, src_len: Tensor, emb: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inputs: src (B, S) ids, src_len (B,) lengths >= 1; ``emb``: their embeddings
        (B, S, E) when already looked up (with dropout).
        Outputs: memory (B, S, H), keys (B, S, H), mask (B, S) True on real tokens,
        hidden (L_dec, B, H) initial decoder state."""
        B, S = src.shape
        lengths = src_len.cpu()
        unpadded = bool((lengths == S).all())  # always so for one message: no packing
        if unpadded and self._core is not None and not self.training:
            memory, keys, hidden = self._core.encode(src)
            return memory, keys, torch.ones(B, S, dtype=torch.bool, device=src.device), hidden
        if emb is None:
            emb = self.drop(self.embedding(src))  # (B, S, E)
        if unpadded:
            out, h_n = self.encoder(emb)
        else:
            packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
            out, h_n = self.encoder(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, 2H)
        memory = torch.tanh(self.enc_proj(out))  # (B, S, H)
        keys = self.attn_key(memory)  # (B, S, H)
        mask = torch.arange(S, device=src.device)[None, :] < src_len.to(src.device)[:, None]
        h0 = torch.tanh(self.bridge(_final_states(h_n, self.cfg.enc_layers, B)))  # (B, H)
        hidden = h0.unsqueeze(0).expand(self.cfg.dec_layers, B, -1).contiguous()
        return memory, keys, mask, hidden

    # ---- decoder ---------------------------------------------------------------------------
    def _attend(self, dec_out: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """dec_out (B, T, H) -> attentional states (B, T, H), all T steps in one matmul."""
        return torch.tanh(self.combine(_attention_input(dec_out, memory, keys, mask)))

    def _logits(self, state: Tensor) -> Tensor:
        """Attentional states (..., H) -> vocabulary logits (..., V)."""
        if self._infer_out is not None and not self.training:
            return self._infer_out(state)
        x = self.out_proj(state)
        if self.out is None:
            return F.linear(x, self.embedding.weight, self.out_bias)
        return self.out(x)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """Teacher-forced loss. src (B, S), src_len (B,), tgt_in = GO + answer (B, T),
        tgt_out = answer + EOS (B, T), PAD-filled. Returns the mean token cross-entropy."""
        if self.training and self.cfg.word_dropout > 0:
            hide = torch.rand(tgt_in.shape, device=tgt_in.device) < self.cfg.word_dropout
            hide &= (tgt_in != PAD_ID) & (tgt_in != GO_ID)
            tgt_in = tgt_in.masked_fill(hide, UNK_ID)
        # Question and answer in one lookup: the embedding's backward then builds one dense
        # (vocabulary x E) gradient instead of two plus their sum (~3% of a training step).
        S = src.shape[1]
        emb = self.drop(self.embedding(torch.cat([src, tgt_in], dim=1)))  # (B, S + T, E)
        memory, keys, mask, hidden = self.encode(src, src_len, emb[:, :S])
        dec_out, _ = self.decoder(emb[:, S:], hidden)  # (B, T, H)
        states = self.drop(self._attend(dec_out, memory, keys, mask))  # (B, T, H)
        real = tgt_out != PAD_ID  # (B, T)
        if self.adaptive is not None:
            x = self.out_proj(states[real]).float()
            with torch.autocast(x.device.type, enabled=False):  # its index_copy_ needs one dtype
                return self.adaptive(x, tgt_out[real]).loss
        logits = self._logits(states[real])  # (N, V): output layer on real tokens only
        return F.cross_entropy(logits.float(), tgt_out[real])

    def sequence_logprobs(
        self,
        src: Tensor,
        src_len: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced log p(answer + EOS | question) per sequence: (B,). Same inputs as
        ``forward``; used to rerank candidate replies. ``rows`` (B,): answer i is scored for
        question ``src[rows[i]]`` (each question is encoded once, however many answers)."""
        memory, keys, mask, hidden = self.encode(src, src_len)
        if rows is not None:
            memory, keys, mask, hidden = memory[rows], keys[rows], mask[rows], hidden[:, rows]
        dec_out, _ = self.decoder(self.drop(self.embedding(tgt_in)), hidden)
        states = self._attend(dec_out, memory, keys, mask)  # (B, T, H)
        real = tgt_out != PAD_ID
        if self.adaptive is not None:
            x = self.out_proj(states[real]).float()
            with torch.autocast(x.device.type, enabled=False):
                token_lp = self.adaptive(x, tgt_out[real]).output
        else:
            logp = torch.log_softmax(self._logits(states[real]).float(), dim=-1)
            token_lp = logp.gather(1, tgt_out[real][:, None])[:, 0]
        out = torch.zeros(tgt_out.shape, dtype=token_lp.dtype, device=token_lp.device)
        out[real] = token_lp
        return out.sum(dim=1)

    def step(
        self,
        tokens: Tensor,
        hidden: Tensor,
        memory: Tensor,
        keys: Tensor,
        mask: Tensor,
        *,
        normalize: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """One decoding step for inference. tokens (B,) -> log-probs (B, V), new hidden.
        ``normalize=False`` may return logits instead (log-probs up to a per-row constant),
        which is all that greedy decoding and sampling need."""
        if self.adaptive is not None:
            state, hidden = self.step_state(tokens, hidden, memory, keys, mask)
            return self.state_scores(state), hidden
        _, logits, hidden = self.step_scores(tokens, hidden, memory, keys, mask)
        return (torch.log_softmax(logits, dim=-1) if normalize else logits), hidden

    def step_scores(
        self, tokens: Tensor, hidden: Tensor, memory: Tensor, keys: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoding step -> (attentional state (B, H), first scores, new hidden). The
        first scores are the logits (B, V) with a full softmax, the head logits
        (``head_scores``) with an adaptive one. One TorchScript call when compiled."""
        if self._core is not None and not self.training:
            return self._core(tokens, hidden, memory, keys, mask)
        state, hidden = self.step_state(tokens, hidden, memory, keys, mask)
        if self.adaptive is not None:
            return state, self.head_scores(state), hidden
        return state, self._logits(state).float(), hidden

    def step_state(
        self, tokens: Tensor, hidden: Tensor, memory: Tensor, keys: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One decoding step up to the output layer: tokens (B,) -> attentional state (B, H),
        new hidden."""
        if self._core is not None and not self.training:
            state, _, hidden = self._core(tokens, hidden, memory, keys, mask, False)
            return state, hidden
        dec_out, hidden = self.decoder(self.embedding(tokens)[:, None, :], hidden)  # (B, 1, H)
        return self._attend(dec_out, memory, keys, mask)[:, 0], hidden

    def state_scores(self, state: Tensor, *, normalize: bool = True) -> Tensor:
        """Attentional states (B, H) -> log-probs (B, V), or logits when ``normalize=False``
        (full softmax only; the adaptive softmax always gives log-probs)."""
        if self.adaptive is not None:
            return self.adaptive.log_prob(self.out_proj(state).float())
        logits = self._logits(state).float()
        return torch.log_softmax(logits, dim=-1) if normalize else logits

    def head_scores(self, state: Tensor) -> Tensor:
        """Attentional states (B, H) -> the adaptive softmax's head logits (B, shortlist +
        clusters): the shortlist words, then one entry per tail cluster."""
        if self._infer_head is not None and not self.training:
            return self._infer_head(state).float()
        return self.adaptive.head(self.out_proj(state).float())

    def prepare_for_inference(self, *, quantize: bool = False, compile: bool = True) -> Seq2Seq:
        """eval(); fold the output layer into one Linear where that is less work, optionally
        int8-quantize the Linear and GRU layers (dynamic quantization) and the adaptive
        softmax's head, and compile the encoder and the decoding step with TorchScript
        (``compile``): in eager mode every int8 Linear call costs ~60 us of Python dispatch,
        more than the matmul of a small layer."""
        self._prepare(quantize=quantize)
        if compile:
            try:
                object.__setattr__(self, "_core", torch.jit.script(_InferenceCore(self)))
            except Exception as exc:  # noqa: BLE001 - eager decoding works the same, slower
                logger.warning("TorchScript unavailable, decoding in eager mode: %s", exc)
        return self

    def _prepare(self, *, quantize: bool) -> None:
        self.eval()
        with torch.no_grad():
            if self.adaptive is not None:
                self._fold_head()
            else:
                self._fold_output()
        if quantize:
            self._quantize()

    def _fold_output(self) -> None:
        """For ``_logits``: the output layer after ``out_proj`` as one Linear (H -> V), only
        when that is less work per step: (H -> V) instead of (H -> E) then (E -> V), i.e.
        when H <= E."""
        if self.cfg.hidden_size > self.cfg.emb_size:
            return
        out = nn.Linear(self.cfg.hidden_size, self.cfg.vocab_size)
        if self.out is None:
            # logits = W_e (W_p s + b_p) + b_o  ==  (W_e W_p) s + (W_e b_p + b_o)
            out.weight.copy_(self.embedding.weight @ self.out_proj.weight)
            out.bias.copy_(self.embedding.weight @ self.out_proj.bias + self.out_bias)
        else:
            out.weight.copy_(self.out.weight @ self.out_proj.weight)
            out.bias.copy_(self.out.weight @ self.out_proj.bias + self.out.bias)
        self._infer_out = out

    def _fold_head(self) -> None:
        """For ``head_scores``: the adaptive head after ``out_proj`` as one Linear (H -> head),
        where that is less work per step than the two."""
        H, E = self.cfg.hidden_size, self.cfg.emb_size
        head = self.adaptive.head
        n = head.out_features
        if H * n > H * E + E * n:
            return
        folded = nn.Linear(H, n)
        # head(W_p s + b_p) = (W_h W_p) s + (W_h b_p [+ b_h])
        folded.weight.copy_(head.weight @ self.out_proj.weight)
        bias = head.weight @ self.out_proj.bias
        folded.bias.copy_(bias + head.bias if head.bias is not None else bias)
        self._infer_head = folded

    def _quantize(self) -> None:
        from torch.ao.quantization import quantize_dynamic

        # Of the adaptive softmax only the head: its small tail projections get slower in int8,
        # the head (emb x shortlist, run at every step) 1.2-1.4x faster (both measured).
        adaptive, self.adaptive = self.adaptive, None
        try:
            quantize_dynamic(self, {nn.Linear, nn.GRU}, dtype=torch.qint8, inplace=True)
            if adaptive is not None:
                head = nn.Sequential(adaptive.head)
                quantize_dynamic(head, {nn.Linear}, dtype=torch.qint8, inplace=True)
                adaptive.head = head[0]
        finally:
            self.adaptive = adaptive


class _TiedOutput(nn.Module):
    """The tied output layer as a module: (H) -> (E) -> logits over the vocabulary."""

    def __init__(self, proj: nn.Module, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.proj = proj
        self.weight = weight
        self.bias = bias

    def forward(self, state: Tensor) -> Tensor:
        return F.linear(self.proj(state), self.weight, self.bias)


class _InferenceCore(nn.Module):
    """``Seq2Seq.encode`` (unpadded input) and ``Seq2Seq.step_scores`` in a form TorchScript
    compiles. It holds the model's own submodules: no copies of the weights. Dropout is left
    out (inference only)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.embedding = model.embedding
        self.encoder = model.encoder
        self.enc_proj = model.enc_proj
        self.attn_key = model.attn_key
        self.bridge = model.bridge
        self.decoder = model.decoder
        self.combine = model.combine
        self.enc_layers = model.cfg.enc_layers
        self.dec_layers = model.cfg.dec_layers
        if model.adaptive is not None:  # the head logits
            head = model._infer_head
            self.scorer = (
                head if head is not None else nn.Sequential(model.out_proj, model.adaptive.head)
            )
        elif model._infer_out is not None:
            self.scorer = model._infer_out
        elif model.out is None:
            self.scorer = _TiedOutput(model.out_proj, model.embedding.weight, model.out_bias)
        else:
            self.scorer = nn.Sequential(model.out_proj, model.out)

    @torch.jit.export
    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B = src.size(0)
        out, h_n = self.encoder(self.embedding(src))
        memory = torch.tanh(self.enc_proj(out))
        keys = self.attn_key(memory)
        h0 = torch.tanh(self.bridge(_final_states(h_n, self.enc_layers, B)))
        return memory, keys, h0.unsqueeze(0).expand(self.dec_layers, B, -1).contiguous()

    def forward(
        self,
        tokens: Tensor,
        hidden: Tensor,
        memory: Tensor,
        keys: Tensor,
        mask: Tensor,
        score: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (state, first scores or an empty tensor when not ``score``, hidden)."""
        dec_out, hidden = self.decoder(self.embedding(tokens).unsqueeze(1), hidden)
        state = torch.tanh(self.combine(_attention_input(dec_out, memory, keys, mask))).squeeze(1)
        if not score:
            return state, torch.empty(0), hidden
        return state, self.scorer(state).float(), hidden


def default_cutoffs(vocab_size: int) -> list[int]:
    """Adaptive-softmax clusters for a vocabulary: none for small ones."""
    if vocab_size <= 6000:
        return []
    if vocab_size <= 10000:
        return [2000]
    return [2000, 8000]

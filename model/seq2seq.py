"""Attention seq2seq: batch-first bi-GRU encoder, GRU decoder with Luong (general) attention.

Its interface: ``encode`` (questions -> ``Encoded``), ``step`` (one decoding step -> ``Step``,
for the strategies in ``model/search.py``), ``forward`` (the teacher-forced training loss) and
``sequence_logprobs`` (whole replies scored, for reranking). ``prepare_for_inference`` adds the
fast path of ``model/inference.py``, which gives the same scores with less work.

Training runs the decoder over the whole teacher-forced target in one GRU call and computes the
attention for all steps in one batched matmul: no Python loop over time steps. The output layer
runs only on non-padding positions and its weights are tied to the input embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xianliao.model.vocab import GO_ID, PAD_ID, UNK_ID

if TYPE_CHECKING:
    from xianliao.model.inference import InferencePath


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
    # head, rare ones in cheaper, lower-dimensional tails: several times less output-layer work.

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Seq2SeqConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Encoded(NamedTuple):
    """A batch of questions as the decoder reads them (``Seq2Seq.encode``)."""

    memory: Tensor  # (B, S, H) attention memory
    keys: Tensor  # (B, S, H) its attention keys
    mask: Tensor  # (B, S) True on real tokens
    hidden: Tensor  # (L_dec, B, H) the decoder's initial state


def attention_input(dec_out: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """Luong attention for decoder outputs (B, T, H), all T steps in one matmul:
    [h_t; c_t] (B, T, 2H), the input of the ``combine`` layer. Shared by the eager model and
    the compiled inference core."""
    scores = torch.bmm(dec_out, keys.transpose(1, 2))  # (B, T, S)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    context = torch.bmm(torch.softmax(scores, dim=-1), memory)  # (B, T, H)
    return torch.cat([dec_out, context], dim=-1)


def final_states(h_n: Tensor, layers: int, batch: int) -> Tensor:
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
        # Built by ``prepare_for_inference``; a plain object, so neither its modules nor its
        # folded weights enter the module tree, state_dict or checkpoints.
        self._fast: InferencePath | None = None

    def _fast_path(self) -> InferencePath | None:
        """The inference fast path once built, in eval mode only: training (dropout,
        gradients) always runs the eager modules."""
        return None if self.training else self._fast

    # ---- encoder ---------------------------------------------------------------------------
    def encode(self, src: Tensor, src_len: Tensor, emb: Tensor | None = None) -> Encoded:
        """Inputs: src (B, S) ids, src_len (B,) lengths >= 1; ``emb``: their embeddings
        (B, S, E) when already looked up (with dropout)."""
        B, S = src.shape
        lengths = src_len.cpu()
        unpadded = bool((lengths == S).all())  # always so for one message: no packing
        fast = self._fast_path()
        if unpadded and fast is not None and fast.core is not None:
            memory, keys, hidden = fast.core.encode(src)
            return Encoded(
                memory, keys, torch.ones(B, S, dtype=torch.bool, device=src.device), hidden
            )
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
        h0 = torch.tanh(self.bridge(final_states(h_n, self.cfg.enc_layers, B)))  # (B, H)
        hidden = h0.unsqueeze(0).expand(self.cfg.dec_layers, B, -1).contiguous()
        return Encoded(memory, keys, mask, hidden)

    # ---- decoder ---------------------------------------------------------------------------
    def _attend(self, dec_out: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """dec_out (B, T, H) -> attentional states (B, T, H), all T steps in one matmul."""
        return torch.tanh(self.combine(attention_input(dec_out, memory, keys, mask)))

    def _logits(self, state: Tensor) -> Tensor:
        """Attentional states (..., H) -> vocabulary logits (..., V)."""
        fast = self._fast_path()
        if fast is not None and fast.out is not None:
            return fast.out(state)
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
        # (vocabulary x E) gradient instead of two plus their sum.
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
        encoded: Encoded | None = None,
    ) -> Tensor:
        """Teacher-forced log p(answer + EOS | question) per sequence: (B,). Same inputs as
        ``forward``; used to rerank candidate replies. ``rows`` (B,): answer i is scored for
        question ``src[rows[i]]`` (each question is encoded once, however many answers).
        ``encoded``: the questions already ``encode``d (``src`` and ``src_len`` unused)."""
        memory, keys, mask, hidden = encoded if encoded is not None else self.encode(src, src_len)
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
        self, tokens: Tensor, hidden: Tensor, memory: Tensor, keys: Tensor, mask: Tensor
    ) -> Step:
        """One decoding step for inference: the last tokens (B,), the decoder's hidden state
        and the ``encode``d question -> a ``Step`` (new hidden state and the scores of the next
        token, in whichever form the strategy asks for)."""
        fast = self._fast_path()
        if fast is not None and fast.core is not None:
            state, logits, hidden = fast.core(tokens, hidden, memory, keys, mask)
            return Step(self, state, hidden, logits if self.adaptive is None else None)
        dec_out, hidden = self.decoder(self.embedding(tokens)[:, None, :], hidden)  # (B, 1, H)
        return Step(self, self._attend(dec_out, memory, keys, mask)[:, 0], hidden)

    def _head_logits(self, state: Tensor) -> Tensor:
        """Attentional states (B, H) -> the adaptive softmax's head logits (B, shortlist +
        clusters): the shortlist words, then one entry per tail cluster."""
        fast = self._fast_path()
        if fast is not None:
            return fast.head_logits(self, state)
        return self.adaptive.head(self.out_proj(state).float())

    def _adaptive_log_probs(self, state: Tensor) -> Tensor:
        return self.adaptive.log_prob(self.out_proj(state).float())

    def prepare_for_inference(self, *, quantize: bool = False, compile: bool = True) -> Seq2Seq:
        """eval() and build the inference fast path (``InferencePath``): folded output layer,
        optionally int8 weights (``quantize``), and the encoder and decoding step compiled
        (``compile``). Call it last: moving the model to another device afterwards leaves
        the fast path behind."""
        from xianliao.model.inference import InferencePath

        self.eval()
        self._fast = InferencePath.build(self, quantize=quantize, compile=compile)
        return self


class Step:
    """What one decoding step gives every strategy: the decoder's new ``hidden`` state and
    the next token's scores, computed on request in the form asked for (each costs a
    different amount of work with an adaptive softmax):

    - ``logits()``: over the whole vocabulary, equal to the log-probs up to a per-row
      constant (all that argmax, top-k and a softmax need). The caller may change it in
      place.
    - ``log_probs(rows)``: normalised, for scores that add up over steps (beam search,
      guidance).
    - ``head_logits()``: adaptive softmax only: its head (the shortlist words and one entry
      per tail cluster), which greedy decoding reads first to skip the tails.
    """

    def __init__(
        self, model: Seq2Seq, state: Tensor, hidden: Tensor, logits: Tensor | None = None
    ) -> None:
        self.model = model
        self.state = state  # attentional states (B, H): the input of the output layer
        self.hidden = hidden
        self._logits = logits  # already computed with the step (full softmax, compiled)

    def logits(self) -> Tensor:
        if self.model.adaptive is not None:
            return self.log_probs()
        if self._logits is None:
            self._logits = self.model._logits(self.state).float()
        return self._logits

    def log_probs(self, rows: Tensor | None = None) -> Tensor:
        """Log-probs (B, V), or of the given ``rows`` only."""
        if self.model.adaptive is not None:
            return self.model._adaptive_log_probs(self.state if rows is None else self.state[rows])
        logits = self.logits() if rows is None else self.logits()[rows]
        return torch.log_softmax(logits, dim=-1)

    def head_logits(self) -> Tensor:
        return self.model._head_logits(self.state).float()


def default_cutoffs(vocab_size: int) -> list[int]:
    """Adaptive-softmax clusters for a vocabulary: none for small ones."""
    if vocab_size <= 6000:
        return []
    if vocab_size <= 10000:
        return [2000]
    return [2000, 8000]

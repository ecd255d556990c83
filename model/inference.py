"""The inference fast path of ``Seq2Seq``: everything ``prepare_for_inference`` builds.

Training and inference share one set of weights and one eager implementation (``Seq2Seq``).
Replying, though, runs that model one token at a time on one short question, where the cost
is the number of operations and Python calls per step rather than their size. So, once a model
is loaded to serve, ``InferencePath`` adds stand-ins that give the same scores with less work,
used by ``Seq2Seq.encode``, ``Seq2Seq.step`` and the output layer in eval mode only:

- ``out``: the tied output layer after ``out_proj`` folded into one Linear (H -> V), built only
  when that is fewer multiply-adds (hidden size <= embedding size). ``head``: the same for the
  adaptive softmax's head.
- int8 weights (``quantize``): dynamic quantization of the Linear and GRU layers and of the
  adaptive head. Not of the adaptive tails, which are small and get slower in int8.
- ``core``: the encoder and the decoding step compiled with TorchScript, one call each.
  It skips dropout (inference only) and the packing and mask of padded batches, so ``encode``
  uses it only for a batch without padding (always so for one message). Compiled, the step
  costs one call instead of a Python dispatch per layer, which with int8 layers costs more
  than a small layer's matmul.

They are kept out of the module tree, so the state_dict and the checkpoint format never
change; ``tests/model/test_seq2seq.py`` checks that every strategy decodes the same with and
without them.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xianliao.model.seq2seq import attention_input, final_states

if TYPE_CHECKING:
    from xianliao.model.seq2seq import Seq2Seq

logger = logging.getLogger(__name__)


class InferencePath:
    """The fast path of one prepared model (see the module's docstring)."""

    def __init__(
        self, out: nn.Module | None, head: nn.Module | None, core: torch.jit.ScriptModule | None
    ) -> None:
        self.out = out  # folded output layer: state (B, H) -> logits (B, V)
        self.head = head  # folded adaptive head: state (B, H) -> head logits
        self.core = core  # compiled ``encode`` (unpadded) and ``step``

    @classmethod
    def build(cls, model: Seq2Seq, *, quantize: bool, compile: bool) -> InferencePath:
        with torch.no_grad():
            out = _fold_output(model) if model.adaptive is None else None
            head = _fold_head(model) if model.adaptive is not None else None
        if quantize:
            _quantize(model)
            out, head = (_quantized_linear(m) if m is not None else None for m in (out, head))
        path = cls(out, head, None)
        if compile:
            try:
                path.core = _script(_InferenceCore(model, path))
            except Exception as exc:  # noqa: BLE001 - eager decoding works the same, slower
                logger.warning("TorchScript unavailable, decoding in eager mode: %s", exc)
        return path

    def head_logits(self, model: Seq2Seq, state: Tensor) -> Tensor:
        if self.core is not None:
            return self.core.head_logits(state)
        if self.head is not None:
            return self.head(state).float()
        return model.adaptive.head(model.out_proj(state).float())


def _fold_output(model: Seq2Seq) -> nn.Linear | None:
    """The output layer after ``out_proj`` as one Linear (H -> V), when that is less work per
    step: (H -> V) instead of (H -> E) then (E -> V), i.e. when H <= E."""
    if model.cfg.hidden_size > model.cfg.emb_size:
        return None
    out = nn.Linear(model.cfg.hidden_size, model.cfg.vocab_size)
    proj = model.out_proj
    if model.out is None:
        # logits = W_e (W_p s + b_p) + b_o  ==  (W_e W_p) s + (W_e b_p + b_o)
        out.weight.copy_(model.embedding.weight @ proj.weight)
        out.bias.copy_(model.embedding.weight @ proj.bias + model.out_bias)
    else:
        out.weight.copy_(model.out.weight @ proj.weight)
        out.bias.copy_(model.out.weight @ proj.bias + model.out.bias)
    return out.eval()


def _fold_head(model: Seq2Seq) -> nn.Linear | None:
    """The adaptive head after ``out_proj`` as one Linear (H -> head), when that is less work
    per step than the two."""
    H, E = model.cfg.hidden_size, model.cfg.emb_size
    head = model.adaptive.head
    n = head.out_features
    if H * n > H * E + E * n:
        return None
    folded = nn.Linear(H, n)
    # head(W_p s + b_p) = (W_h W_p) s + (W_h b_p [+ b_h])
    folded.weight.copy_(head.weight @ model.out_proj.weight)
    bias = head.weight @ model.out_proj.bias
    folded.bias.copy_(bias + head.bias if head.bias is not None else bias)
    return folded.eval()


# Why TorchScript and torch.ao, both deprecated: their successors were measured on the reply
# path (bench/bench_latency.py --backends, 1 thread, fp32 and int8; bench/RESULTS.md section
# 23) and none kept today's latency. torch.compile of this same core gave the same replies but
# was no faster, slower in int8, and compiles for seconds in every process and for new input
# shapes; torch.export's program ran the step slower than TorchScript and cannot export the
# int8 GRU; torchao's dynamic int8 covers Linear layers only, so the GRUs stay fp32, and its
# replies came several times slower. So we keep both and silence exactly their deprecation
# warnings, only around our own calls; when TorchScript goes, ``build`` falls back to eager
# decoding (same replies, slower) with one warning in the log. Measure again with a new torch.


def _quantize_dynamic(module: nn.Module, types: set[type]) -> None:
    """torch.ao's dynamic int8 quantization, in place, without its deprecation warnings (see
    the note above)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        # the int8 GRU's weights are made with torch.quantize_per_tensor, deprecated with it
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        quantize_dynamic(module, types, dtype=torch.qint8, inplace=True)


def _quantized_linear(linear: nn.Linear) -> nn.Module:
    box = nn.Sequential(linear)
    _quantize_dynamic(box, {nn.Linear})
    return box[0]


def _quantize(model: Seq2Seq) -> None:
    """int8 weights for the model's Linear and GRU layers, in place. Of the adaptive softmax
    only the head: its small tail projections get slower in int8, the head (run at every
    step) faster (bench/RESULTS.md section 14)."""
    adaptive, model.adaptive = model.adaptive, None
    try:
        _quantize_dynamic(model, {nn.Linear, nn.GRU})
        if adaptive is not None:
            adaptive.head = _quantized_linear(adaptive.head)
    finally:
        model.adaptive = adaptive


def _script(core: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its deprecation warning (see the note above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"`?torch\.jit\.script`? is deprecated", DeprecationWarning
        )
        return torch.jit.script(core)


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
    """``Seq2Seq.encode`` (unpadded input) and ``Seq2Seq.step`` in a form TorchScript compiles.
    It holds the model's own submodules and the path's folded layers: no copies of the
    weights. Dropout is left out (inference only). With a full softmax the step returns the
    logits too; with an adaptive one, which scores a strategy needs depends on the strategy,
    so ``head_logits`` is a call of its own."""

    def __init__(self, model: Seq2Seq, path: InferencePath) -> None:
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
        self.adaptive = model.adaptive is not None
        if model.adaptive is not None:  # the head logits
            head = path.head
            self.scorer = (
                head if head is not None else nn.Sequential(model.out_proj, model.adaptive.head)
            )
        elif path.out is not None:
            self.scorer = path.out
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
        h0 = torch.tanh(self.bridge(final_states(h_n, self.enc_layers, B)))
        return memory, keys, h0.unsqueeze(0).expand(self.dec_layers, B, -1).contiguous()

    @torch.jit.export
    def head_logits(self, state: Tensor) -> Tensor:
        return self.scorer(state).float()

    def forward(
        self, tokens: Tensor, hidden: Tensor, memory: Tensor, keys: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (state, logits (an empty tensor with an adaptive softmax), hidden)."""
        dec_out, hidden = self.decoder(self.embedding(tokens).unsqueeze(1), hidden)
        state = torch.tanh(self.combine(attention_input(dec_out, memory, keys, mask))).squeeze(1)
        if self.adaptive:
            return state, torch.empty(0), hidden
        return state, self.scorer(state).float(), hidden

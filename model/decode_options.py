"""Decoding options: one validated object for every strategy, read from ``DECODE_OPTIONS``,
``xianliao chat``, ``eval --options`` and a checkpoint's serving settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

STRATEGIES = ("greedy", "beam", "sample", "sample_rank")


@dataclass
class DecodeOptions:
    strategy: str = "sample"  # "greedy", "beam", "sample" or "sample_rank" (draw
    # ``num_samples`` replies, keep the one with the best MMI-reranked score: fewer generic
    # and more on-topic replies, for num_samples decodings' work)
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
    # this question makes likelier than any question would; every step runs twice (1 = off)
    rerank_beam: bool = False  # beam: rerank its n-best with mmi_weight and bidi_weight too
    # (off: beam search returns its most likely reply)
    retrieve: int = 10  # answers taken from the reply index (when one is served) for the
    # indexed questions most like the message; they and the model's own candidates are all
    # scored as in sample_rank, and the best is sent (0 = generation only)
    similarity_weight: float = 24.0  # added to a retrieved answer's score per unit of question
    # similarity (0..1: 1 for the same words): the model mostly judges between answers to
    # equally close questions, since across questions it favoured short, far corpus answers
    # (judged blind, bench/RESULTS.md section 31)
    approved_weight: float = 4.0  # more of the same for answers an admin approved or edited
    generate: bool = True  # the model proposes replies of its own beside the index's (false:
    # it only judges the index's answers; for a model too small to write sensible replies.
    # Without a reply index, or with retrieve 0, the model generates anyway)
    generate_until: float = 12.0  # ... but not once a retrieved answer leads by this much on
    # its question alone (similarity_weight x similarity + its corpus's trusted offset): the
    # model's own reply never won past a lead of 8 (bench/RESULTS.md section 32), and
    # generating is the slowest part of a reply. 0 = always generate
    min_similarity: float = 0.0  # answers to indexed questions less alike than this (0..1) are
    # not candidates; with generate false and none left, the bot says it cannot answer yet
    trust_from: float = 0.3  # a trusted corpus's offset (xianliao index --offset) counts from
    # this question similarity (0..1) on ...
    trust_full: float = 0.6  # ... in full from this one, in between in proportion (both 0:
    # always in full)

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
            "generate_until",
            "length_penalty",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if not isinstance(self.generate, bool):
            raise ValueError(f"generate must be true or false, not {self.generate!r}")
        for name in ("min_similarity", "trust_from", "trust_full"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], not {value!r}")
        if self.trust_from > self.trust_full:
            raise ValueError(
                f"trust_from ({self.trust_from}) must not exceed trust_full ({self.trust_full}); "
                "one may come from the checkpoint's serving entry: set both"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if self.guidance < 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = off), not {self.guidance}")
        if self.guidance != 1.0 and self.strategy == "greedy":
            raise ValueError("guidance does nothing with strategy greedy: use beam or sample")

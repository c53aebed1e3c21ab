"""The testbed corpus: synthetic documents whose long-range structure is known by construction.

Every document mixes two kinds of structure that need different mechanisms:

* **Local structure** (every word token): words follow a sparse first-order Markov chain (four possible
  successors per word, probabilities 0.85/0.1/0.03/0.02); a sentence break ``.`` restarts it from one of 8 starter words. It is predictable from the
  current token alone and needs no attention. (With ``local_order: 2`` the preference among the
  successors also depends on the word before, which needs a short-range attention head.)
* **Long-range facts** (about one token in 20 is a fact value, ~15 % of the loss of a model that cannot
  see them): a document assigns each of ``num_attributes`` attributes a
  value (one of ``values_per_attribute``). The attribute is mentioned as the pair ``A07 A07:3`` (marker,
  value) again and again; consecutive mentions of the same attribute are ``min_gap`` to ``max_gap``
  tokens apart (log-uniform). The first mention of an attribute is unpredictable; every later mention's
  value is determined by the previous one, which lies at least ``min_gap`` (default 150) tokens back. A
  model with a window of 128 tokens can only guess it (chance = 1 / values_per_attribute); a model with a
  long enough window can copy it through a content-based attention head.

Because no long-range dependency is shorter than ``min_gap``, calibration windows of 128 tokens contain
no resolvable long-range target at all, while windows of 512 contain many: the sequence-length question
has a known answer on this corpus. ``dependency_distances`` recovers, for any token stream, which tokens
depend on context how far back, so losses can be split into "long-range" and "local" tokens.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", ".")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, PERIOD_ID = range(len(SPECIAL_TOKENS))
SUCCESSORS_PER_WORD = 4
SUCCESSOR_PROBS = (0.85, 0.1, 0.03, 0.02)
SENTENCE_STARTERS = 8  # a new sentence starts with one of the first 8 words


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines the generated corpus (its hash keys the cache)."""

    vocab_size: int = 512
    num_attributes: int = 32  # facts per document
    values_per_attribute: int = 8  # chance accuracy on a long-range target = 1/8
    min_gap: int = 150  # no long-range dependency is shorter than this
    max_gap: int = 1500
    sentence_end_prob: float = 0.05
    local_order: int = 1  # 1: words follow from the current word alone; 2: also from the word before
    doc_tokens: int = 2048
    train_docs: int = 300  # 614k calibration tokens
    test_docs: int = 32  # 65k evaluation tokens
    grammar_seed: int = 1234
    seed: int = 0

    @property
    def first_value_id(self) -> int:
        return len(SPECIAL_TOKENS) + self.num_attributes

    @property
    def first_word_id(self) -> int:
        return self.first_value_id + self.num_attributes * self.values_per_attribute

    @property
    def num_words(self) -> int:
        return self.vocab_size - self.first_word_id

    def __post_init__(self):
        if self.num_words < 16:
            raise ValueError(
                f"testbed vocab_size={self.vocab_size} leaves {self.num_words} word tokens; "
                "raise vocab_size or lower num_attributes / values_per_attribute"
            )
        if self.local_order not in (1, 2):
            raise ValueError(f"testbed local_order must be 1 or 2, got {self.local_order}")
        if not 0 < self.min_gap < self.max_gap:
            raise ValueError(f"testbed gaps must satisfy 0 < min_gap < max_gap, got {self.min_gap}, {self.max_gap}")

    def to_dict(self) -> dict:
        return asdict(self)


def vocabulary(spec: CorpusSpec) -> list[str]:
    """Token strings in id order: specials, attribute markers, attribute values, words."""
    width = len(str(spec.num_attributes - 1))
    markers = [f"A{a:0{width}d}" for a in range(spec.num_attributes)]
    values = [f"{m}:{v}" for m in markers for v in range(spec.values_per_attribute)]
    words = [f"w{w}" for w in range(spec.num_words)]
    return [*SPECIAL_TOKENS, *markers, *values, *words]


def successor_table(spec: CorpusSpec) -> list[list[int]]:
    rng = np.random.default_rng(spec.grammar_seed)
    return rng.integers(0, spec.num_words, size=(spec.num_words, SUCCESSORS_PER_WORD)).tolist()


def generate_document(
    rng: np.random.Generator,
    spec: CorpusSpec,
    successors: list[list[int]],
    n_tokens: int,
    min_gap: int | None = None,
    max_gap: int | None = None,
    first_mention_within: int | None = None,
) -> list[int]:
    """One document of exactly ``n_tokens`` token ids (no BOS)."""
    min_gap = min_gap or spec.min_gap
    max_gap = max_gap or spec.max_gap
    first_mention_within = first_mention_within or max_gap
    n_attr, n_val = spec.num_attributes, spec.values_per_attribute
    marker0, value0, word0 = len(SPECIAL_TOKENS), spec.first_value_id, spec.first_word_id

    due = rng.uniform(0, first_mention_within, n_attr).astype(np.int64)
    value = rng.integers(0, n_val, n_attr)
    log_lo, log_hi = math.log(min_gap), math.log(max_gap)
    # Pre-drawn randomness for the word chain (cheaper than one generator call per token).
    budget = n_tokens + 8
    sentence_breaks = (rng.random(budget) < spec.sentence_end_prob).tolist()
    choices = np.searchsorted(np.cumsum(SUCCESSOR_PROBS), rng.random(budget) * 0.999999).tolist()
    restarts = rng.integers(0, SENTENCE_STARTERS, budget).tolist()

    tokens: list[int] = []
    word, prev_word, i = restarts[0], 0, 0
    while len(tokens) < n_tokens:
        attr = int(np.argmin(due))
        if due[attr] <= len(tokens):
            tokens += [marker0 + attr, value0 + attr * n_val + int(value[attr])]
            due[attr] = len(tokens) + int(math.exp(rng.uniform(log_lo, log_hi)))
            continue
        for _ in range(4):  # a few words between fact checks
            if sentence_breaks[i % budget]:
                tokens.append(PERIOD_ID)
                word, prev_word = restarts[i % budget], 0
            else:
                choice = choices[i % budget]
                if spec.local_order == 2:
                    choice = (choice + prev_word) % SUCCESSORS_PER_WORD
                word, prev_word = successors[word][choice], word
                tokens.append(word0 + word)
            i += 1
    return tokens[:n_tokens]


def generate_documents(spec: CorpusSpec, n_docs: int, seed: int, **gap_overrides) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    successors = successor_table(spec)
    return [generate_document(rng, spec, successors, spec.doc_tokens, **gap_overrides) for _ in range(n_docs)]


def split_seeds(spec: CorpusSpec) -> dict[str, int]:
    """Train and test documents come from disjoint random streams (and are checked to differ)."""
    return {"train": spec.seed * 1000 + 1, "test": spec.seed * 1000 + 2}


def render(ids: list[int], vocab: list[str]) -> str:
    return " ".join(vocab[i] for i in ids)


def dependency_distances(ids, spec: CorpusSpec) -> np.ndarray:
    """For each position, how far back the token it must copy lies (0 = no long-range dependency).

    A value token ``A07:3`` depends on the previous value token of attribute 7 in the same document
    (documents start at ``<s>``). The first mention of an attribute has no dependency (0). Works on any
    stream of testbed token ids, e.g. the concatenated evaluation split.
    """
    ids = np.asarray(ids)
    out = np.zeros(len(ids), dtype=np.int64)
    value0, word0 = spec.first_value_id, spec.first_word_id
    last_seen = np.full(spec.num_attributes, -1, dtype=np.int64)
    for pos in np.flatnonzero((ids == BOS_ID) | ((ids >= value0) & (ids < word0))).tolist():
        tok = int(ids[pos])
        if tok == BOS_ID:
            last_seen[:] = -1
            continue
        attr = (tok - value0) // spec.values_per_attribute
        if last_seen[attr] >= 0:
            out[pos] = pos - last_seen[attr]
        last_seen[attr] = pos
    return out

r"""Bag-of-words text for the document model (NVDM): readers, a seeded split, baselines, perplexity.

A corpus is a count matrix ``X`` of shape (D, V): row d holds n_dv, how often word v of the
vocabulary occurs in document d, and N_d = sum_v n_dv is the document's length.  Word order is
gone (a bag of words); a model scores a document by the probability of its words,

    log p(d) = sum_v n_dv log p(v | d)                        (no multinomial coefficient)

and is compared by the perplexity over held-out documents (Miao, Yu & Blunsom, 2016, eq. 11),

    perplexity = exp( -(1/D) sum_d log p(d) / N_d ),                                  (PPL)

with the ELBO in place of log p(d) for a variational model (an upper bound on the perplexity
that log p(d) would give).  Lower is better; a model that knows nothing (uniform over V words)
scores exactly V.

Sources (``load_text_dataset`` picks one)
-----------------------------------------
* ``"offline"`` (the default; needs no download): the Reuters corpus shipped inside the ``lda``
  package (395 news stories from August 1996, 4,258 words, ``lda.datasets.load_reuters()``),
  split by document 315 / 40 / 40 with a seeded permutation.  No labels.
* a folder holding ``test.feat`` and ``vocab.new`` (``../shared/data/20news``: the 20 Newsgroups
  test split as preprocessed by Miao et al., 7,505 documents, 2,000 words, newsgroup labels),
  or a path to one ``.feat`` file (its ``vocab.new`` beside it, if any).  Split by document with
  a seeded permutation: by default 1,000 test and 500 validation documents, the rest training.

The ``.feat`` format: one document a line, ``label id:count id:count ...``, the label an integer
(the newsgroup, 1...20) and ids 1-based indices into the vocabulary file, whose lines are
``word [corpus_count]``.

Public API
----------
read_feat(path, vocab_size=None) -> (X (D, V) int32, labels (D,) int64)
read_vocab(path) -> list of words
split_documents(n, n_valid, n_test, seed) -> (train, valid, test) index arrays
TextDataset                      train / valid / test count matrices, labels, vocab, name
load_reuters(), load_feat_corpus(path), load_text_dataset(source)
check_counts(X, name, V)         a (D, V) array of finite non-negative integer counts
perplexity(log_p, n_words)       (PPL) above, from per-document log p(d) and N_d
Unigram                          p(v) from the training counts (add-one smoothing): the floor
lda_document_bound(X, topics, alpha) per-document ELBO of LDA given fitted topics (scikit-learn's)
nearest_words(E, vocab, query, k) the k words whose vectors have the highest cosine with query's
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import DataError, check_array

__all__ = ["read_feat", "read_vocab", "split_documents", "TextDataset", "load_reuters",
           "load_feat_corpus", "load_text_dataset", "check_counts", "perplexity", "Unigram",
           "lda_document_bound", "nearest_words", "SOURCES_HELP"]

SOURCES_HELP = ("use source='offline' (the default: the Reuters corpus bundled with the lda package, "
                "no download), a folder holding test.feat and vocab.new (such as ../shared/data/20news), "
                "or a path to a .feat file")


# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------

def read_vocab(path):
    """The words of a vocabulary file, one a line (``word`` or ``word count``), in order."""
    path = Path(path)
    words = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            raise DataError(f"{str(path)!r} line {i}: expected 'word [count]', got an empty line")
        words.append(parts[0])
    if not words:
        raise DataError(f"{str(path)!r} holds no words")
    return words


def read_feat(path, vocab_size=None):
    """Read a ``.feat`` file: lines ``label id:count ...`` with 1-based word ids.

    Returns (X, labels): X (D, V) int32 counts with V = ``vocab_size`` (default: the largest id
    seen), labels (D,) int64.  A malformed token, an id outside 1..V, or a count that is not a
    positive integer raises DataError naming the file, the line and the token.  A word listed
    twice in a line has its counts added.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no .feat file at {str(path)!r}")
    labels, rows, cols, vals = [], [], [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    d = 0
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue                                     # blank lines (a trailing newline) are skipped
        try:
            labels.append(int(parts[0]))
        except ValueError:
            raise DataError(f"{str(path)!r} line {i}: expected an integer label first, got {parts[0]!r}") from None
        for tok in parts[1:]:
            wid, sep, cnt = tok.partition(":")
            try:
                v, c = int(wid), int(cnt)
            except ValueError:
                v = c = None
            if not sep or v is None or v < 1 or c < 1:
                raise DataError(f"{str(path)!r} line {i}: expected 'id:count' with id >= 1 and "
                                f"count >= 1, got {tok!r}")
            if vocab_size is not None and v > vocab_size:
                raise DataError(f"{str(path)!r} line {i}: word id {v} is outside the vocabulary "
                                f"of {vocab_size} words (ids are 1-based)")
            rows.append(d)
            cols.append(v - 1)
            vals.append(c)
        d += 1
    if d == 0:
        raise DataError(f"{str(path)!r} holds no documents")
    V = int(vocab_size) if vocab_size is not None else (max(cols) + 1 if cols else 1)
    X = np.zeros((d, V), dtype=np.int64)
    np.add.at(X, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
              np.asarray(vals, dtype=np.int64))
    if X.max(initial=0) > np.iinfo(np.int32).max:
        raise DataError(f"{str(path)!r}: a count exceeds the int32 range")
    return X.astype(np.int32), np.asarray(labels, dtype=np.int64)


def check_counts(X, name="X", V=None):
    """Raise DataError unless X is (D, V) of finite, non-negative, integer-valued counts."""
    check_array(X, name, ndim=2, shape=None if V is None else (None, V), dtype_kind="fuib")
    if X.dtype.kind == "f":
        if not np.all(np.isfinite(X)):
            raise DataError(f"{name} holds NaN/inf; expected word counts")
        if np.any(X != np.floor(X)):
            bad = X[X != np.floor(X)][:3].tolist()
            raise DataError(f"{name} must hold integer word counts, got values such as {bad}")
    if X.size and X.min() < 0:
        raise DataError(f"{name} must hold non-negative word counts, got the value {X.min()}")
    return X


# ----------------------------------------------------------------------------------------------
# The dataset record and the split by document
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextDataset:
    """Count matrices (D, V) for train / valid / test, labels (or None), and the vocabulary."""
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    valid_labels: np.ndarray | None
    test_labels: np.ndarray | None
    vocab: list
    name: str

    @property
    def V(self):
        return len(self.vocab)

    def __repr__(self):
        labels = "labeled" if self.train_labels is not None else "unlabeled"
        return (f"TextDataset({self.name!r}, {labels}, V = {self.V} words, documents train "
                f"{len(self.train)} / valid {len(self.valid)} / test {len(self.test)})")


def split_documents(n, n_valid, n_test, seed=0):
    """Indices (train, valid, test) of a seeded random split of n documents; each sorted."""
    n, n_valid, n_test = int(n), int(n_valid), int(n_test)
    if n_valid < 0 or n_test < 0 or n_valid + n_test >= n:
        raise ValueError(f"expected n_valid, n_test >= 0 leaving training documents, got n_valid="
                         f"{n_valid}, n_test={n_test} of n={n} documents")
    order = np.random.default_rng(seed).permutation(n)
    test, valid, train = order[:n_test], order[n_test:n_test + n_valid], order[n_test + n_valid:]
    return np.sort(train), np.sort(valid), np.sort(test)


def _split(X, labels, vocab, name, n_valid, n_test, seed):
    keep = X.sum(axis=1) > 0                         # an empty document has no per-word score
    X = X[keep]
    labels = labels[keep] if labels is not None else None
    tr, va, te = split_documents(len(X), n_valid, n_test, seed)
    lab = (lambda i: labels[i]) if labels is not None else (lambda i: None)
    return TextDataset(X[tr], X[va], X[te], lab(tr), lab(va), lab(te), list(vocab), name)


def load_reuters(n_valid=40, n_test=40, seed=0):
    """The offline default: the 395 Reuters stories of the ``lda`` package, V = 4,258 words."""
    try:
        import lda.datasets
    except ImportError:
        raise DataError("the offline text corpus needs the 'lda' package (pip install lda); "
                        + SOURCES_HELP) from None
    X = np.asarray(lda.datasets.load_reuters(), dtype=np.int32)
    vocab = list(lda.datasets.load_reuters_vocab())
    return _split(X, None, vocab, "reuters (lda package)", n_valid, n_test, seed)


def load_feat_corpus(path, n_valid=500, n_test=1000, seed=0):
    """A ``.feat`` corpus (a file, or a folder with ``test.feat`` / ``vocab.new``), split by document.

    The vocabulary comes from ``vocab.new`` beside the file when it exists (then every id must
    be in it), else the words are named ``w1``, ``w2``, ... up to the largest id.
    """
    path = Path(path).expanduser()
    feat = path / "test.feat" if path.is_dir() else path
    if path.is_dir() and not feat.is_file():
        feats = sorted(path.glob("*.feat"))
        if len(feats) != 1:
            raise DataError(f"expected one .feat file in {str(path)!r} (test.feat), found "
                            f"{[f.name for f in feats]}; " + SOURCES_HELP)
        feat = feats[0]
    vocab_file = feat.parent / "vocab.new"
    vocab = read_vocab(vocab_file) if vocab_file.is_file() else None
    X, labels = read_feat(feat, None if vocab is None else len(vocab))
    if vocab is None:
        vocab = [f"w{i + 1}" for i in range(X.shape[1])]
    return _split(X, labels, vocab, str(feat), n_valid, n_test, seed)


def load_text_dataset(source=None, seed=0, n_valid=None, n_test=None):
    """The corpus named by ``source``: None or "offline" (Reuters), or a path (see the module
    docstring).  ``seed`` seeds the split; n_valid / n_test override the default sizes."""
    source = "offline" if source is None else str(source)
    kw = {k: v for k, v in (("n_valid", n_valid), ("n_test", n_test)) if v is not None}
    if source == "offline":
        return load_reuters(seed=seed, **kw)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"no text corpus at {source!r}; " + SOURCES_HELP)
    if path.is_file() and path.suffix != ".feat":
        raise DataError(f"{source!r} is a file but not a .feat file; " + SOURCES_HELP)
    return load_feat_corpus(path, seed=seed, **kw)


# ----------------------------------------------------------------------------------------------
# Perplexity and the baselines
# ----------------------------------------------------------------------------------------------

def perplexity(log_p, n_words):
    """exp(-(1/D) sum_d log_p[d] / n_words[d])  (PPL), from (D,) log p(d) (or ELBO_d) and N_d."""
    log_p = np.asarray(log_p, dtype=np.float64).reshape(-1)
    n_words = np.asarray(n_words, dtype=np.float64).reshape(-1)
    if log_p.shape != n_words.shape or log_p.size == 0:
        raise DataError(f"expected log_p and n_words of one shape (D,), D >= 1, got {log_p.shape} "
                        f"and {n_words.shape}")
    if np.any(n_words <= 0):
        raise DataError("every document needs at least one word for a per-word perplexity")
    return float(np.exp(-np.mean(log_p / n_words)))


class Unigram:
    """p(v) = (c_v + 1) / (sum_u c_u + V) from training counts c_v: one distribution for all documents.

    log p(d) = sum_v n_dv log p(v).  The baseline every topic model must beat.
    """

    def __init__(self, X):
        check_counts(X, "X")
        c = np.asarray(X, dtype=np.float64).sum(axis=0)
        self.log_p = np.log(c + 1.0) - math.log(c.sum() + len(c))

    def log_prob(self, X):
        """(D,) log p(d) of each row of counts."""
        check_counts(X, "X", len(self.log_p))
        return np.asarray(X, dtype=np.float64) @ self.log_p


def lda_document_bound(X, topics, alpha, n_iter=200, tol=1e-6):
    r"""The per-document ELBO of LDA (Blei et al., 2003), topics fixed, theta inferred per document.

    X: (D, V) counts; topics: (K, V) the variational Dirichlet parameters lambda of the topics
    (scikit-learn's ``LatentDirichletAllocation.components_``); alpha: the document-topic prior
    (``doc_topic_prior_``).  With E[log beta_kv] = psi(lambda_kv) - psi(sum_u lambda_ku) and
    q(theta_d) = Dir(gamma_d), the coordinate ascent of Blei et al. iterates

        phi_dvk ∝ exp(E[log theta_dk] + E[log beta_kv]),   gamma_dk = alpha + sum_v n_dv phi_dvk,

    and the bound is

        ELBO_d = sum_v n_dv log sum_k exp(E[log theta_dk] + E[log beta_kv])
                 + log Gamma(K alpha) - K log Gamma(alpha) - log Gamma(sum_k gamma_dk)
                 + sum_k [ log Gamma(gamma_dk) + (alpha - gamma_dk) E[log theta_dk] ]   (D,)

    (the phi terms collapsed into the log-sum-exp at the optimal phi).  It is the same per-document
    bound scikit-learn sums in its ``score`` (without the corpus-level topic term).
    """
    from scipy.special import digamma, gammaln, logsumexp as lse
    X = np.asarray(check_counts(X, "X"), dtype=np.float64)
    lam = np.asarray(topics, dtype=np.float64)
    K = lam.shape[0]
    if lam.ndim != 2 or lam.shape[1] != X.shape[1]:
        raise DataError(f"expected topics of shape (K, {X.shape[1]}), got {lam.shape}")
    Elog_beta = digamma(lam) - digamma(lam.sum(axis=1, keepdims=True))     # (K, V)
    exp_beta = np.exp(Elog_beta)
    gamma = np.ones((X.shape[0], K))
    for _ in range(n_iter):
        Elog_theta = digamma(gamma) - digamma(gamma.sum(axis=1, keepdims=True))
        exp_theta = np.exp(Elog_theta)                                      # (D, K)
        norm = exp_theta @ exp_beta + 1e-100                                # sum_k (D, V)
        new = alpha + exp_theta * ((X / norm) @ exp_beta.T)                  # alpha + sum_v n phi
        done = np.max(np.abs(new - gamma)) < tol
        gamma = new
        if done:
            break
    Elog_theta = digamma(gamma) - digamma(gamma.sum(axis=1, keepdims=True))
    words = np.zeros(X.shape[0])
    for d in range(X.shape[0]):                                             # only the words present
        v = np.nonzero(X[d])[0]
        words[d] = X[d, v] @ lse(Elog_theta[d][:, None] + Elog_beta[:, v], axis=0)
    return (words + gammaln(K * alpha) - K * gammaln(alpha) - gammaln(gamma.sum(axis=1))
            + np.sum(gammaln(gamma) + (alpha - gamma) * Elog_theta, axis=1))


def nearest_words(E, vocab, query, k=5):
    """The k words whose rows of E (V, L) have the highest cosine similarity with ``query``'s row."""
    if query not in vocab:
        raise KeyError(f"{query!r} is not in the vocabulary")
    E = np.asarray(E, dtype=np.float64)
    U = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    q = vocab.index(query)
    sim = U @ U[q]
    sim[q] = -np.inf
    top = np.argsort(-sim)[:k]
    return [vocab[i] for i in top], sim[top]

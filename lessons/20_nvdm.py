"""Lesson 20: the Neural Variational Document Model (Miao, Yu & Blunsom, 2016): a VAE for text.

Cited: lecture notes 002_e73e17ee4c7eee9a.txt, "Neural Variational Document Model".

Lecture notes (seed 002, "Neural Variational Document Model"): the input is a bag of words and
the decoder becomes a softmax over the vocabulary,

    p(e_i | h) = exp(h^T R e_i + b_i) / sum_j exp(h^T R e_j + b_j),

so a document with counts n_v has log p(d | h) = sum_v n_v log softmax(h R + b)_v, and the ELBO is
that expectation minus KL(q(h|d) || N(0, I)).  R holds one vector per word: the notes show it as a
semantic space (nearest words) and the words most raised by each latent direction as topics.

What it prints and draws (``--out``, default figures/20_nvdm/):
  1. the softmax-with-counts gradient and the whole model's gradient against finite differences
     (float64), and the log-sum-exp's stability at logits of 1e4;
  2. the corpus (offline: the Reuters stories of the ``lda`` package; ``--data
     ../shared/data/20news`` for 20 Newsgroups) and two baselines fitted on its training
     documents: the unigram model and LDA (scikit-learn), scored by the per-document perplexity
     exp(-(1/D) sum_d log p(d) / N_d);
  3. training the NVDM; perplexity curves against the baselines (curves.png); the test
     perplexity from the ELBO and from importance sampling, checked: E_q[log w] = ELBO,
     IS >= ELBO;
  4. the nearest words in R for the notes' query words that are in the vocabulary
     (word_vectors.png: a 2-D projection of those words and their neighbours);
  5. the top words of latent directions: the axes z_l, and both ends of the principal directions
     of the encoded documents (directions.png).

    python lessons/20_nvdm.py                                      # about 90 s (60 s of training)
    python lessons/20_nvdm.py --data ../shared/data/20news --hidden 500 --latent 50 --seconds 300
    python lessons/20_nvdm.py --quick                              # seconds (the test suite runs this)
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

FILE = Path(globals().get("__file__", "20_nvdm.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository on sys.path, selects the Agg backend)

from nplvm.bench.nvdm import mean_elbo, principal_topics, topic_words, train_nvdm  # noqa: E402
from nplvm.gradcheck import check_model  # noqa: E402
from nplvm.models.nvdm import NVDM, softmax_counts_nll  # noqa: E402
from nplvm.objectives import importance_sampled_log_px  # noqa: E402
from nplvm.data.text import Unigram, lda_document_bound, load_text_dataset, nearest_words, perplexity  # noqa: E402

plt = C.plt
NOTES_QUERIES = ("weapons", "medical", "companies", "define", "israel", "book")
EXTRA_QUERIES = ("church", "music", "space", "police", "election")


def extra_flags(parser):
    parser.add_argument("--data", default=None,
                        help="text corpus: 'offline' (Reuters, the default) or ../shared/data/20news")
    parser.add_argument("--hidden", default=None, help="encoder widths (default 200; quick 16)")
    parser.add_argument("--latent", type=int, default=None, help="latent size = LDA topics (default 20; quick 4)")
    parser.add_argument("--seconds", type=float, default=None, help="training budget (default 60; quick: 4 epochs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")


# %% [1] The gradient of the softmax decoder with counts, and the whole model's
def check_gradients(table, seed):
    """-log p(d|z) = N_d logsumexp(l) - sum_v n_v l_v: its gradient w.r.t. the logits, then every
    parameter of a small NVDM, against central differences (Richardson, then nplvm.gradcheck)."""
    g = np.random.default_rng(seed)
    x = g.poisson(0.8, size=(3, 7)).astype(np.float64)          # short documents: tanh not saturated
    x[:, 0] += 1
    logits = g.normal(size=(3, 7))
    _, dl = softmax_counts_nll(x, logits)
    num = C.richardson_grad(lambda: softmax_counts_nll(x, logits, grad=False)[0].sum(), logits)
    err = float(np.max(np.abs(dl - num)) / np.max(np.abs(num)))
    table.add("d(-log p(d|z))/dl vs finite differences (max rel.)", err, 0.0, tol=1e-9, relation="<=",
              note="Richardson central differences, O(h^4)")
    m = NVDM(x_dim=7, hidden=(6,), latent=3, dtype="float64", seed=seed)
    for p in m.params.values():                                  # off the zero start of the logvar head
        p += g.normal(scale=0.1, size=p.shape)
    report = check_model(m, x, seed=seed, eps=1e-5, max_entries_per_param=None)
    print(report.report(1e-6))
    table.add(f"NVDM gradient, every entry of {len(report)} parameters (max rel.)", max(report.values()),
              0.0, tol=1e-6, relation="<=", note="float64 central differences, h = 1e-5, fixed eps")
    # Stability: log softmax is invariant to adding a constant to every logit; at 1e4 a naive
    # exp overflows to inf and the value becomes NaN.
    shift = 1e4
    a, _ = softmax_counts_nll(x, logits, grad=False)
    b, db = softmax_counts_nll(x, logits + shift)
    table.add("-log p(d|z) at logits + 1e4 = at logits (max abs., nats)", float(np.max(np.abs(a - b))), 0.0,
              tol=8 * np.finfo(np.float64).eps * shift * x.sum(1).max(), relation="<=",
              note="log-sum-exp shifted by the row max; tol: 8 float64 roundings of 1e4, times N_d")
    return max(report.values())


# %% [2] The corpus and two baselines: the unigram model and LDA
def baselines(args, ds, L):
    """Unigram and LDA (scikit-learn, L topics) fitted on the training documents."""
    from sklearn.decomposition import LatentDirichletAllocation
    n_test = ds.test.sum(axis=1)
    uni = Unigram(ds.train)
    ppl_uni = {"valid": perplexity(uni.log_prob(ds.valid), ds.valid.sum(1)),
               "test": perplexity(uni.log_prob(ds.test), n_test)}
    t0 = time.perf_counter()
    lda = LatentDirichletAllocation(L, learning_method="batch", max_iter=C.quick_or(args, 5, 30),
                                    random_state=args.seed).fit(ds.train)
    ppl_lda = {"valid": perplexity(lda_document_bound(ds.valid, lda.components_, lda.doc_topic_prior_),
                                   ds.valid.sum(1)),
               "test": perplexity(lda_document_bound(ds.test, lda.components_, lda.doc_topic_prior_), n_test)}
    print(f"    unigram: valid {ppl_uni['valid']:.1f}, test {ppl_uni['test']:.1f};  LDA ({L} topics, "
          f"{time.perf_counter() - t0:.1f} s): valid {ppl_lda['valid']:.1f}, test {ppl_lda['test']:.1f};"
          f"  uniform: {ds.V}")
    return ppl_uni, ppl_lda


# %% [3] Training the NVDM; perplexity from the ELBO and from importance sampling
def train(args, ds, L, hidden):
    model = NVDM(x_dim=ds.V, hidden=hidden, latent=L, activation="tanh", seed=args.seed)
    model.init_bias(ds.train)                       # the decoder starts as the unigram model
    seconds = None if args.quick else (args.seconds or 60.0)
    epochs = 4 if args.quick else None
    print(f"\n[3] training {model!r} ({model.num_parameters():,} parameters) on {len(ds.train)} "
          f"documents, Adam lr {args.lr}, " + (f"{epochs} epochs" if epochs else f"{seconds:.0f} s"))
    history = train_nvdm(model, ds.train, ds.valid, lr=args.lr, batch_size=64, seconds=seconds,
                         epochs=epochs, seed=args.seed, eval_every=1,
                         log=(lambda s: print(s)) if args.quick else None)
    return model, history


def evaluate(args, table, model, ds):
    n_test = ds.test.sum(axis=1)
    S, K = C.quick_or(args, 20, 50), C.quick_or(args, 50, 500)
    x = ds.test
    elbo = mean_elbo(model, x, S=S, seed=args.seed + 1)          # closed-form KL, S draws of z
    lw = np.concatenate([model.log_weights(x, 1, np.random.default_rng([args.seed, s])) for s in range(S)])
    # E_q[log w] = ELBO: the Monte Carlo mean of log w (KL sampled) against the closed-form-KL ELBO
    diff = lw.mean(0) - elbo                                     # mean zero for every document
    table.add("E_q[log w] = ELBO (test mean, nats/doc)", float(lw.mean()), float(elbo.mean()),
              tol=4 * float(np.std(diff, ddof=1)) / math.sqrt(len(x)),
              note=f"{S} draws per document, independent noise; tol 4 SE of the mean difference")
    log_pd = importance_sampled_log_px(model, x, K=K, batch=50, rng=args.seed + 2)
    gap = log_pd - elbo
    se_gap = float(np.std(gap) / math.sqrt(len(gap)))
    table.add("IS log p(d) >= ELBO (test mean, nats/doc)", float(log_pd.mean()), float(elbo.mean()),
              tol=4 * se_gap, relation=">=", note=f"K = {K}; Jensen: E log w <= log E w")
    ppl = {"elbo": perplexity(elbo, n_test), "is": perplexity(log_pd, n_test), "K": K}
    print(f"    test perplexity: ELBO {ppl['elbo']:.1f}, IS (K = {K}) {ppl['is']:.1f}")
    return ppl


def plot_curves(args, history, ppl_uni, ppl_lda, ppl):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["valid_ppl"] for h in history], "o-", ms=3, label="NVDM, validation (ELBO)")
    ax.axhline(ppl_lda["valid"], color="tab:green", ls="--", label=f"LDA, validation ({ppl_lda['valid']:.0f})")
    ax.axhline(ppl_uni["valid"], color="0.4", ls=":", label=f"unigram, validation ({ppl_uni['valid']:.0f})")
    best = min(history, key=lambda h: h["valid_ppl"])
    ax.plot([best["epoch"]], [best["valid_ppl"]], "*", color="tab:red", ms=12,
            label=f"kept: epoch {best['epoch']} (test {ppl['elbo']:.0f}; IS {ppl['is']:.0f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity  exp(-(1/D) sum_d ELBO_d / N_d)")
    ax.set_title("NVDM held-out perplexity against the baselines (lower is better)", fontsize=10)
    lo = min(min(h["valid_ppl"] for h in history), ppl_lda["valid"], ppl_uni["valid"])
    hi = max(ppl_lda["valid"], ppl_uni["valid"], history[min(1, len(history) - 1)]["valid_ppl"])
    ax.set_ylim(0.9 * lo, 1.1 * hi)
    ax.legend(fontsize=8)
    return C.save_figure(fig, args.out / "curves.png")


# %% [4] The semantic space R: nearest words
def nearest_table(args, model, ds):
    E = model.word_vectors()
    queries = [w for w in NOTES_QUERIES if w in ds.vocab] or [w for w in EXTRA_QUERIES if w in ds.vocab]
    queries += [w for w in EXTRA_QUERIES if w in ds.vocab and w not in queries][:max(0, 4 - len(queries))]
    rows = {}
    print("\n[4] nearest words by cosine similarity in R (the decoder's word vectors)")
    for w in queries:
        words, sim = nearest_words(E, ds.vocab, w, 5)
        rows[w] = words
        print(f"    {w:<11} -> {', '.join(f'{u} ({s:.2f})' for u, s in zip(words, sim))}")
    # a 2-D picture: the first two principal directions of the queries and their neighbours
    idx = sorted({ds.vocab.index(u) for w in rows for u in [w] + rows[w]})
    P = E[idx] / np.linalg.norm(E[idx], axis=1, keepdims=True)
    P = P - P.mean(0)
    U, s, Vt = np.linalg.svd(P, full_matrices=False)
    xy = P @ Vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    for c, (w, near) in zip(colors, rows.items()):
        for u in [w] + near:
            i = idx.index(ds.vocab.index(u))
            ax.scatter(*xy[i], color=c, s=40 if u == w else 12)
            ax.annotate(u, xy[i], fontsize=10 if u == w else 7, color=c,
                        fontweight="bold" if u == w else "normal")
    ax.set_title("Query words (bold) and their 5 nearest words in R, projected on 2 principal axes\n"
                 "(neighbours are by cosine in all L dimensions; the projection distorts)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return C.save_figure(fig, args.out / "word_vectors.png"), rows


# %% [5] Latent directions as topics: the words each direction of z raises most
def directions_figure(args, model, ds):
    """Word v's association with a direction u of the latent is u^T R e_v (its logit rises by that
    much per unit of z along u).  The axes z_l themselves are arbitrary (the prior N(0, I) is
    rotation invariant), so we also take the principal directions of the encoded documents."""
    n = C.quick_or(args, 2, 6)
    tops = topic_words(model, ds.vocab, n_directions=n, k=10)
    print("\n[5] top words of the first latent axes (largest R[l, v])")
    for l, words in enumerate(tops):
        print(f"    z_{l}: {' '.join(words)}")
    principal = principal_topics(model, ds.train, ds.vocab, n_directions=n, k=10)
    print("    principal directions of the encoded training documents, both ends:")
    for l, ends in enumerate(principal):
        print(f"    u_{l + 1} +: {' '.join(ends['+'])}\n    u_{l + 1} -: {' '.join(ends['-'])}")
    cols = [(f"u_{l + 1} +", e["+"]) for l, e in enumerate(principal)] + \
           [(f"u_{l + 1} -", e["-"]) for l, e in enumerate(principal)]
    cols.sort(key=lambda c: (int(c[0].split()[0][2:]), c[0][-1] == "-"))
    fig, ax = plt.subplots(figsize=(min(1.6 * len(cols) + 1, 18), 3.6))
    ax.axis("off")
    tab = ax.table(cellText=[list(r) for r in zip(*[c[1] for c in cols])], colLabels=[c[0] for c in cols],
                   loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    ax.set_title("Topics: the 10 words at each end of the principal directions u of the encoded "
                 "documents (score u^T R e_v)", fontsize=10)
    return C.save_figure(fig, args.out / "directions.png"), tops, principal


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra=extra_flags)
table = C.CheckTable("Lesson 20: NVDM checks")
print("[1] gradients, float64")
grad_error = check_gradients(table, args.seed)
ds = load_text_dataset(args.data, seed=args.seed)
L = args.latent or C.quick_or(args, 4, 20)
hidden = tuple(int(h) for h in str(args.hidden or C.quick_or(args, 16, 200)).split(","))
print(f"\n[2] {ds!r}")
ppl_uni, ppl_lda = baselines(args, ds, L)
model, history = train(args, ds, L, hidden)
first, best = history[0]["valid_ppl"], min(h["valid_ppl"] for h in history)
table.add("training lowers the validation perplexity", best, first, tol=0.0, relation="<=",
          note="best evaluation vs the first (after one epoch)")
ppl = evaluate(args, table, model, ds)
figures = [plot_curves(args, history, ppl_uni, ppl_lda, ppl)]
fig, nearest = nearest_table(args, model, ds)
figures.append(fig)
fig, tops, principal = directions_figure(args, model, ds)
figures.append(fig)
print(f"\n    test perplexity: NVDM {ppl['elbo']:.1f} (ELBO), {ppl['is']:.1f} (IS); "
      f"LDA {ppl_lda['test']:.1f}; unigram {ppl_uni['test']:.1f}; uniform {ds.V}")
print()
print(table)
results = {"checks": table.to_dict(), "figures": figures, "history": history, "grad_error": grad_error,
           "perplexity": ppl, "lda": ppl_lda, "unigram": ppl_uni, "nearest": nearest, "directions": tops,
           "principal_directions": principal,
           "config": model.config}

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if all(r["ok"] for r in results["checks"].values()) else 1)

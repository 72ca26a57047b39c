"""Text-generation metrics for Arabic medical answers: chrF/chrF++, ROUGE-L, BERTScore, bootstrap
confidence intervals, the paired bootstrap test, and urgent-advice rates. Pure functions; imported
by evaluate.py, and usable on their own:

    from core.metrics import corpus_chrf, rouge_l, bertscore, bootstrap_ci
    corpus_chrf(["ألم في الصدر"], ["ألم شديد في الصدر"])          # 0-100, equals sacrebleu's

Scales follow the reference packages: chrF on 0-100 (sacrebleu), ROUGE-L and BERTScore on 0-1
(rouge-score, bert-score). evaluate.py reports everything in percent.

What each metric matches, and where it differs on purpose:

chrF / chrF++  sacrebleu's CHRF(char_order=6, word_order=0 or 2, beta=2) with its defaults:
    character n-grams over the text with all whitespace removed; chrF++ adds word 1- and
    2-grams of whitespace tokens with one leading or trailing ASCII punctuation mark split off
    (sacrebleu's rule, so Arabic punctuation stays attached); with several references the
    statistics of the reference with the best sentence F are kept; corpus chrF = the F-score of
    the statistics summed over sentences (not the mean of sentence scores); the default
    averaging is sacrebleu's "effective order" (orders where hypothesis or reference is too
    short are left out); `eps_smoothing=True` gives sacrebleu's chrF++.py-style variant.
ROUGE-L  F-measure, recall and precision from the longest common subsequence of tokens, as
    rouge-score computes them, but on Arabic-aware tokens: lower-cased whitespace tokens with
    Unicode punctuation (، ؛ ؟ « » and ASCII) removed. rouge-score's default tokenizer replaces
    every character outside [a-z0-9] by a space, so on Arabic it scores empty token lists.
BERTScore  bert-score 0.3.13's score(): [CLS] text [SEP] from the BERT folder's own tokenizer
    (text stripped, truncated to the model's max length), hidden state number `layer` (0 = the
    embeddings, as bert-score's num_layers), L2-normalized, each token greedily matched to its
    most similar token on the other side; precision/recall are weighted means of those
    similarities, weights = 1 (or idf from the references) with [CLS]/[SEP] at 0 (still
    matchable); F = 2PR/(P+R); no baseline rescaling (none exists for Arabic). An empty
    candidate or reference scores P = R = F = 0, as bert-score does. Several references:
    P, R and F are each the max over the references (bert-score takes the element-wise max, so
    P, R and F may come from different references). Two deliberate differences, both only in
    corner cases: bert-score computes the greedy max over padded batch positions whose
    similarity is set to 0, so a token whose similarities are all negative gets 0 or its true
    max depending on the batch; we always use the true max over real tokens. And where all of a
    sentence's idf weights are 0 (every token appears in every reference) bert-score returns
    NaN precision/recall; we return 0.

Bootstrap: percentile intervals over resampled examples (seeded numpy Generator). The paired test
is Koehn (2004)'s one-sided paired bootstrap: both systems are scored on the same resampled
example sets; p = share of resamples where system B does not beat A, with add-one smoothing
((count + 1) / (resamples + 1)) so p is never exactly 0. (sacrebleu's --paired-bs is a two-sided
variant of the same resampling, centred on the mean absolute difference.)
"""
import math
import unicodedata
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from core.common import UsageError, normalize_arabic, pad_batch
from core.lexicon import mentions_urgent_care
from models import load_pretrained

# -----------------------------------------------------------------------------
# chrF / chrF++ (Popovic 2015, 2017), as sacrebleu computes them

CHRF_CHAR_ORDER = 6
CHRF_BETA = 2
_ASCII_PUNCT = set('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')  # sacrebleu's chrF++ punctuation set


def _chrf_words(text):
    """sacrebleu's chrF++ word split: whitespace tokens, one edge ASCII punctuation mark split off
    (the last one if present, else the first); single characters stay whole."""
    words = []
    for w in text.split():
        if len(w) > 1 and w[-1] in _ASCII_PUNCT:
            words += [w[:-1], w[-1]]
        elif len(w) > 1 and w[0] in _ASCII_PUNCT:
            words += [w[0], w[1:]]
        else:
            words.append(w)
    return words


def _chrf_ngrams(text, char_order, word_order):
    """One Counter per order: character 1..char_order-grams (whitespace removed), then word
    1..word_order-grams."""
    chars = "".join(text.split())
    out = [Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, char_order + 1)]
    words = _chrf_words(text) if word_order > 0 else []
    for n in range(1, word_order + 1):
        out.append(Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)))
    return out


def chrf_from_stats(stats, char_order=CHRF_CHAR_ORDER, word_order=0, beta=CHRF_BETA, eps_smoothing=False):
    """chrF (0-100) from [hyp, ref, match] counts per order, flattened (length 3 * orders)."""
    eps, factor = 1e-16, beta ** 2
    score, avg_prec, avg_rec, effective_order = 0.0, 0.0, 0.0, 0
    n_orders = char_order + word_order
    for i in range(n_orders):
        n_hyp, n_ref, n_match = (float(x) for x in stats[3 * i: 3 * i + 3])
        prec = n_match / n_hyp if n_hyp > 0 else eps
        rec = n_match / n_ref if n_ref > 0 else eps
        denom = factor * prec + rec
        score += (1 + factor) * prec * rec / denom if denom > 0 else eps
        if n_hyp > 0 and n_ref > 0:  # "effective order": only orders both sides are long enough for
            avg_prec += prec
            avg_rec += rec
            effective_order += 1
    if eps_smoothing:
        return 100 * score / n_orders
    if effective_order == 0:
        return 0.0
    avg_prec, avg_rec = avg_prec / effective_order, avg_rec / effective_order
    if avg_prec + avg_rec == 0:
        return 0.0
    return 100 * (1 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)


def chrf_stats(hyp, refs, char_order=CHRF_CHAR_ORDER, word_order=0, beta=CHRF_BETA, eps_smoothing=False):
    """Sentence statistics [hyp, ref, match] * orders (ints) against the best-scoring reference.

    refs: one string or a list of strings (several references for this hypothesis).
    """
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyp_ngrams = _chrf_ngrams(hyp, char_order, word_order)
    best, best_f = None, -1.0
    for ref in refs:
        stats = []
        for h, r in zip(hyp_ngrams, _chrf_ngrams(ref, char_order, word_order)):
            match = sum(min(c, r[g]) for g, c in h.items() if g in r)
            # a hypothesis n-gram only counts when the reference has n-grams of that order
            stats += [sum(h.values()) if r else 0, sum(r.values()), match]
        f = chrf_from_stats(stats, char_order, word_order, beta, eps_smoothing)
        if f > best_f:  # first reference wins ties, as in sacrebleu
            best, best_f = stats, f
    return best


def sentence_chrf(hyp, refs, word_order=0, char_order=CHRF_CHAR_ORDER, beta=CHRF_BETA, eps_smoothing=False):
    """Sentence chrF (word_order=0) or chrF++ (word_order=2), 0-100."""
    return chrf_from_stats(chrf_stats(hyp, refs, char_order, word_order, beta, eps_smoothing),
                           char_order, word_order, beta, eps_smoothing)


def corpus_chrf_stats(hyps, refs, word_order=0, char_order=CHRF_CHAR_ORDER, beta=CHRF_BETA, eps_smoothing=False):
    """Per-sentence statistics as an int64 array [N, 3 * orders] (for corpus scores and bootstrap).

    refs[i]: the reference string of hyps[i], or a list of references for it.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    n_cols = 3 * (char_order + word_order)
    rows = [chrf_stats(h, r, char_order, word_order, beta, eps_smoothing) for h, r in zip(hyps, refs)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), n_cols)


def corpus_chrf(hyps, refs, word_order=0, char_order=CHRF_CHAR_ORDER, beta=CHRF_BETA, eps_smoothing=False):
    """Corpus chrF (word_order=0) or chrF++ (word_order=2), 0-100: the F-score of the statistics
    summed over all sentences, as sacrebleu's corpus_chrf / CHRF.corpus_score."""
    stats = corpus_chrf_stats(hyps, refs, word_order, char_order, beta, eps_smoothing)
    return chrf_from_stats(stats.sum(0), char_order, word_order, beta, eps_smoothing)


# -----------------------------------------------------------------------------
# ROUGE-L on Arabic-aware tokens


def arabic_tokens(text, normalize=False):
    """Lower-cased whitespace tokens with Unicode punctuation (categories P*: ، ؛ ؟ « » . , ...)
    replaced by spaces; Arabic letters and digits are kept. normalize=True first applies
    common.normalize_arabic (diacritics, alef/ya/ta marbuta, digits)."""
    if normalize:
        text = normalize_arabic(text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return text.split()


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp, ref, normalize=False):
    """ROUGE-L of one hypothesis against one reference: dict(precision, recall, fmeasure), 0-1.
    precision = LCS / len(hyp tokens), recall = LCS / len(ref tokens), F = 2PR / (P + R)
    (rouge-score's definition; 0 when either side has no tokens)."""
    h, r = arabic_tokens(hyp, normalize), arabic_tokens(ref, normalize)
    if not h or not r:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    lcs = lcs_length(h, r)
    p, rec = lcs / len(h), lcs / len(r)
    f = 2 * p * rec / (p + rec) if p + rec > 0 else 0.0
    return {"precision": p, "recall": rec, "fmeasure": f}


# -----------------------------------------------------------------------------
# BERTScore (Zhang et al. 2020), as bert-score 0.3.13 computes it

MULTILINGUAL_BERT_LAYER = 9  # bert-score's layer for bert-base-multilingual-cased (its Arabic default)
BERTSCORE_FORMAT = "bertscore-v1"  # bump when the computation changes, so old numbers are not mixed in


def default_bertscore_layer(folder, config):
    """bert-score's layer choice: 9 for multilingual BERT (recognized by its folder name or its
    119547-token vocabulary); for any other BERT there is no tuned default, so the last layer."""
    name = str(folder).lower()
    if "multilingual" in name or getattr(config, "vocab_size", None) == 119547:
        return MULTILINGUAL_BERT_LAYER
    return config.num_hidden_layers


def bertscore_config_string(model_name, layer, idf):
    """The setting every BERTScore number is reported with (like bert-score's hash), e.g.
    'bert-base-multilingual-cased_L9_no-idf_no-rescale_bertscore-v1'."""
    return f"{model_name}_L{layer}_{'idf' if idf else 'no-idf'}_no-rescale_{BERTSCORE_FORMAT}"


def bertscore_max_length(tokenizer, config):
    """Longest input (special tokens included): the tokenizer's model_max_length when its folder
    declares one, capped by the model's position embeddings (as bert-score truncates)."""
    limit = config.max_position_embeddings
    m = getattr(tokenizer, "model_max_length", None)
    return min(limit, m) if isinstance(m, int) and m > 2 else limit


def bertscore_encode(tokenizer, text, max_length):
    """[CLS] tokens [SEP] of the stripped text, content truncated to max_length - 2 tokens."""
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ValueError("BERTScore needs a BERT tokenizer with [CLS] and [SEP] tokens")
    ids = tokenizer.encode(text.strip(), add_special_tokens=False) if text.strip() else []
    return [tokenizer.cls_id] + ids[:max_length - 2] + [tokenizer.sep_id]


def idf_weights(ref_ids):
    """idf from the references, as bert-score: log((M + 1) / (df + 1)) with df = the number of
    reference sentences holding the token; unseen tokens log(M + 1). [CLS]/[SEP] occur in every
    reference, so their idf is log(1) = 0. Returns (dict, default)."""
    df = Counter(t for ids in ref_ids for t in set(ids))
    M = len(ref_ids)
    return {t: math.log((M + 1) / (c + 1)) for t, c in df.items()}, math.log(M + 1)


@torch.no_grad()
def bert_embeddings(model, ids_list, layer, pad_id, batch_size=64):
    """L2-normalized fp32 hidden states of layer `layer` for each id list: a list of [T_i, C]
    tensors on the model's device. Batches are formed from sequences sorted by length."""
    device = next(model.parameters()).device
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    out = [None] * len(ids_list)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        x, mask = pad_batch([ids_list[i] for i in idx], pad_id, device)
        hidden = model(x, attention_mask=mask, output_hidden_states=True)[layer].float()
        hidden = hidden / hidden.norm(dim=-1, keepdim=True)
        for b, i in enumerate(idx):
            out[i] = hidden[b, :len(ids_list[i])]
    return out


def greedy_match(h_emb, r_emb, h_w, r_w):
    """P, R, F of one pair from normalized embeddings [Th, C], [Tr, C] and token weights."""
    sim = h_emb @ r_emb.T  # (Th, Tr) cosine similarities
    P = (sim.max(dim=1).values * h_w).sum() / h_w.sum()
    R = (sim.max(dim=0).values * r_w).sum() / r_w.sum()
    P, R = P.item(), R.item()
    P, R = (0.0 if math.isnan(P) else P), (0.0 if math.isnan(R) else R)  # all weights 0
    if len(h_w) <= 2 or len(r_w) <= 2:  # empty sentence: only [CLS] [SEP] -> 0, as bert-score
        return 0.0, 0.0, 0.0
    F = 2 * P * R / (P + R) if P + R != 0 else 0.0
    return P, R, F


def bertscore(cands, refs, model, tokenizer, layer, idf=False, batch_size=64, max_length=512,
              chunk_size=2048, progress=None):
    """BERTScore precision, recall, F1 (numpy float64 arrays [N], 0-1) of cands against refs.

    refs[i]: the reference string of cands[i], or a list of references (P, R, F each the max
    over them). model: our BertModel (forward(..., output_hidden_states=True) -> list of hidden
    states) on any device; layer: index into that list. idf: weights from all the references
    (see idf_weights). Candidates are scored chunk_size at a time, so only one chunk's
    embeddings are held; each distinct sentence of a chunk is embedded once.
    """
    if len(cands) != len(refs):
        raise ValueError(f"{len(cands)} candidates but {len(refs)} references")
    n_layers = len(model.encoder.layer)
    if not 0 <= layer <= n_layers:
        raise ValueError(f"BERTScore layer {layer} out of range: the model has layers 0..{n_layers}")
    groups = [[r] if isinstance(r, str) else list(r) for r in refs]
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    token_ids = {s: bertscore_encode(tokenizer, s, max_length) for s in set(cands) | {r for g in groups for r in g}}
    if idf:
        table, unseen = idf_weights([token_ids[r] for g in groups for r in g])
        weight = lambda t: table.get(t, unseen)  # noqa: E731
    else:
        specials = {tokenizer.cls_id, tokenizer.sep_id}
        weight = lambda t: 0.0 if t in specials else 1.0  # noqa: E731
    device = next(model.parameters()).device
    P, R, F = np.zeros(len(cands)), np.zeros(len(cands)), np.zeros(len(cands))
    progress = len(cands) > chunk_size if progress is None else progress
    for start in tqdm(range(0, len(cands), chunk_size), desc="bertscore", disable=not progress, leave=False):
        chunk = range(start, min(start + chunk_size, len(cands)))
        sentences = sorted({cands[i] for i in chunk} | {r for i in chunk for r in groups[i]})
        emb = dict(zip(sentences, bert_embeddings(model, [token_ids[s] for s in sentences], layer, pad_id, batch_size)))
        w = {s: torch.tensor([weight(t) for t in token_ids[s]], dtype=torch.float32, device=device) for s in sentences}
        for i in chunk:
            scores = [greedy_match(emb[cands[i]], emb[r], w[cands[i]], w[r]) for r in groups[i]]
            P[i], R[i], F[i] = np.max(np.array(scores), axis=0)  # element-wise max, as bert-score
    return P, R, F


def load_bertscore_model(folder, device="cpu", layer=None):
    """Our BertModel (the encoder of a classifier folder too) and tokenizer from a local folder,
    in fp32, eval mode, keeping only the layers up to `layer` (as bert-score drops the unused
    ones; default: default_bertscore_layer). Returns (model, tokenizer, max_length, layer)."""
    model, tokenizer = load_pretrained(folder, dtype=torch.float32, device=device, expect="bert")
    model = getattr(model, "bert", model)  # BertForSequenceClassification -> its encoder
    n_layers = model.config.num_hidden_layers
    layer = default_bertscore_layer(folder, model.config) if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise UsageError(f"--bertscore-layer {layer} out of range (beyond the model): {folder} has layers "
                         f"0..{n_layers}")
    model.encoder.layer = model.encoder.layer[:layer]  # the later layers would be computed for nothing
    return model, tokenizer, bertscore_max_length(tokenizer, model.config), layer


# -----------------------------------------------------------------------------
# Bootstrap confidence intervals and the paired test


RESAMPLE_BLOCK_ELEMENTS = 2**24  # counts drawn per block (128 MB of float64): 430k rows stay cheap


def resample_counts(n_items, n_resamples=1000, seed=0):
    """How often each item is drawn in each bootstrap resample: float64 [n_resamples, n_items].
    (A resample of n items drawn with replacement is a multinomial draw of counts.)"""
    return np.concatenate(list(_count_blocks(n_items, n_resamples, seed)))


def _count_blocks(n_items, n_resamples, seed):
    """resample_counts in blocks of rows, so [n_resamples, n_items] is never held at once;
    the concatenated blocks are exactly resample_counts (one generator, drawn row by row)."""
    rng = np.random.default_rng(seed)
    block = max(1, RESAMPLE_BLOCK_ELEMENTS // n_items)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        yield rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size).astype(np.float64)


def _resampled_scores(stats, counts, corpus_score):
    stats = np.asarray(stats, dtype=np.float64)
    sums = counts @ stats.reshape(len(stats), -1)  # (B, K) statistics summed over each resample
    if corpus_score is None:  # mean metric
        return sums[:, 0] / len(stats)
    return np.array([corpus_score(s) for s in sums])


def _bootstrap_scores(systems, corpus_score, n_resamples, seed):
    """Each system's score on the same n_resamples resamples of the examples: [systems, n_resamples]."""
    blocks = [[_resampled_scores(stats, counts, corpus_score) for stats in systems]
              for counts in _count_blocks(len(systems[0]), n_resamples, seed)]
    return np.concatenate([np.stack(b) for b in blocks], axis=1)


def bootstrap_ci(stats, corpus_score=None, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap interval (lo, hi) of a metric over examples.

    stats: per-example values [N] for a mean metric (corpus_score=None), or per-example
    sufficient statistics [N, K] with corpus_score(summed [K]) -> score (corpus chrF:
    corpus_score=chrf_from_stats on corpus_chrf_stats rows).
    """
    if len(stats) == 0:
        return None
    scores = _bootstrap_scores([stats], corpus_score, n_resamples, seed)[0]
    lo, hi = np.percentile(scores, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(stats_a, stats_b, corpus_score=None, n_resamples=1000, seed=0):
    """Koehn (2004) one-sided paired bootstrap: are B's scores better than A's?

    stats_a, stats_b: per-example stats of two systems on the same examples, in the same order
    (as for bootstrap_ci). Both are scored on the same resampled example sets.
    Returns dict(delta = score B - score A, p_value = (#{resamples: B <= A} + 1) / (n + 1),
    ci = 95% percentile interval of the difference).
    """
    if len(stats_a) != len(stats_b):
        raise ValueError(f"paired test needs the same examples: {len(stats_a)} vs {len(stats_b)}")
    if len(stats_a) == 0:
        return {"delta": None, "p_value": None, "ci": None}
    full = np.ones((1, len(stats_a)))
    delta = (_resampled_scores(stats_b, full, corpus_score) - _resampled_scores(stats_a, full, corpus_score))[0]
    scores_a, scores_b = _bootstrap_scores([stats_a, stats_b], corpus_score, n_resamples, seed)
    diffs = scores_b - scores_a
    p = (np.sum(diffs <= 0) + 1) / (n_resamples + 1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"delta": float(delta), "p_value": float(p), "ci": [float(lo), float(hi)]}


# -----------------------------------------------------------------------------
# Urgent-advice rates


def urgent_flags(texts, detector=None):
    """1.0 where the text advises urgent care, else 0.0 (numpy [N]). detector defaults to
    lexicon.mentions_urgent_care (data/urgent_lexicon.tsv, negation-aware)."""
    detector = mentions_urgent_care if detector is None else detector
    return np.array([1.0 if detector(t) else 0.0 for t in texts], dtype=np.float64)


def urgent_rates(flags, severities, classes=("mild", "moderate", "critical")):
    """Share of answers advising urgent care, overall and per severity class (None if empty).
    For critical complaints this is the recall of urgent advice; for mild ones, over-triage."""
    flags, severities = np.asarray(flags, dtype=np.float64), list(severities)
    out = {"overall": float(flags.mean()) if len(flags) else None}
    for c in classes:
        sel = np.array([s == c for s in severities], dtype=bool)
        out[c] = float(flags[sel].mean()) if sel.any() else None
    return out


# -----------------------------------------------------------------------------
# BERTScore baseline rescaling, estimated on the evaluated set itself


def mismatched_pairs(refs, n_pairs=1000, seed=0):
    """Index pairs (i, j) of two different reference answers of the set, for the baseline.

    The references are shuffled (seeded) and each is paired with the next one in that order
    (a cycle, so no reference meets itself); pairs whose two texts are equal are dropped; at most
    n_pairs are kept. Returns two int arrays."""
    order = np.random.default_rng(seed).permutation(len(refs))
    i, j = order, np.roll(order, -1)
    keep = np.array([refs[a].strip() != refs[b].strip() for a, b in zip(i, j)], dtype=bool)
    return i[keep][:n_pairs], j[keep][:n_pairs]


def bertscore_baseline(refs, model, tokenizer, layer, idf=False, batch_size=64, max_length=512, n_pairs=1000,
                       seed=0):
    """BERTScore baseline (P, R, F on 0-1) of unrelated answers in this domain and language: the
    mean BERTScore of mismatched reference pairs (one doctor's answer scored against the answer
    to another question, mismatched_pairs). It plays the part of bert-score's baseline files,
    which are estimated from random pairs of Common Crawl sentences and exist for no Arabic
    model. With fewer than two distinct references there is no baseline: None."""
    i, j = mismatched_pairs(refs, n_pairs, seed)
    if len(i) == 0:
        return None
    P, R, F = bertscore([refs[a] for a in i], [refs[b] for b in j], model, tokenizer, layer, idf=idf,
                        batch_size=batch_size, max_length=max_length)
    return float(P.mean()), float(R.mean()), float(F.mean())


def rescale_with_baseline(score, baseline):
    """bert-score's rescaling: (score - b) / (1 - b), on the 0-1 scale. An unrelated answer lands
    near 0, a perfect one at 1; the ranking of systems is unchanged."""
    return (np.asarray(score, dtype=np.float64) - baseline) / (1.0 - baseline)


# -----------------------------------------------------------------------------
# Degeneracy: numbers that look fine can come from garbage output

REPEAT_MIN_TOKENS = 4  # an answer this long or longer ...
REPEAT_SHARE = 0.5  # ... whose most frequent token makes at least this share of it is "repetitive"
REPEAT_MIN_CHARS = 8  # likewise an answer of this many letters or more whose most frequent letter makes
# REPEAT_SHARE of them (ههههههههه, or a 2-letter loop): in real Arabic the commonest letter (alef) is
# about an eighth of the letters, and a short answer (< 8 letters) is too short to judge.


def repetitive(tokens):
    """True for an answer that is mostly one repeated unit: one token (>= REPEAT_MIN_TOKENS tokens, the
    commonest >= REPEAT_SHARE of them) or, inside the words, one letter (>= REPEAT_MIN_CHARS letters, the
    commonest >= REPEAT_SHARE of them)."""
    if len(tokens) >= REPEAT_MIN_TOKENS and Counter(tokens).most_common(1)[0][1] >= REPEAT_SHARE * len(tokens):
        return True
    chars = "".join(tokens)
    return len(chars) >= REPEAT_MIN_CHARS and Counter(chars).most_common(1)[0][1] >= REPEAT_SHARE * len(chars)


def degeneracy(texts):
    """Flags of degenerate output over a list of answers (percent, 0-100; None when there is nothing
    to count: no answers, or no bigram for distinct2):
    empty      share of answers with no token at all
    distinct1  distinct unigrams / all unigrams over the answers (Li et al. 2016's distinct-1)
    distinct2  the same for bigrams (within an answer)
    repeated   share of answers that are mostly one repeated token or one repeated letter (repetitive)
    Tokens are arabic_tokens (whitespace, punctuation removed)."""
    if not texts:
        return {"empty": None, "distinct1": None, "distinct2": None, "repeated": None}
    toks = [arabic_tokens(t) for t in texts]
    uni = [w for t in toks for w in t]
    bi = [tuple(t[k:k + 2]) for t in toks for k in range(len(t) - 1)]
    return {"empty": 100 * sum(not t for t in toks) / len(toks),
            "distinct1": 100 * len(set(uni)) / len(uni) if uni else None,
            "distinct2": 100 * len(set(bi)) / len(bi) if bi else None,
            "repeated": 100 * sum(map(repetitive, toks)) / len(toks)}

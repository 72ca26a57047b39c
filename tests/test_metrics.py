"""core/metrics.py against independent references: sacrebleu (chrF, chrF++), bert-score on real BERT
weights (BERTScore), hand-computed LCS values (ROUGE-L), and the statistics of the bootstrap."""
import copy
import importlib
import math
import random

import numpy as np
import pytest
import torch

from core import metrics as M

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics import CHRF  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

U64, U32 = 2.0 ** -53, 2.0 ** -24  # unit roundoff of float64 and float32

# chrF against sacrebleu: both compute the same integer counts (a wrong count moves a score by >~ 1e-3),
# then the same per-order ratios and their sums in the same order, bit for bit; only the last formula
# F = (1 + b^2) P R / (b^2 P + R) x 100 is written in another order: 4 roundings on each side of a value
# <= 100, so |ours - sacrebleu| <= 8 u x 100 = 8.9e-14 (measured 2026-12-06: at most 3.6e-15).
CHRF_ATOL = 8 * U64 * 100


def within_roundings(x, n):
    """x up to n float64 roundings (of its size): a value computed by a few float64 operations."""
    return pytest.approx(x, rel=n * U64, abs=0)

AR = ["ألم شديد في الصدر منذ يومين مع ضيق في التنفس",
      "يجب الذهاب إلى الطوارئ فوراً، لا تنتظر!",
      "هل الصداع خطير؟ أعاني منه كل يوم؛ ما العلاج؟",
      "الْحُمَّى عند الأطفال شائعة",
      "ألم ألم ألم في في البطن"]
EN = ["the cat sat on the mat.", "(hi) there, how are you?", "go go go to the ER now!!", "a", "x y"]
MIXED = ["عندي fever و headache منذ 3 أيام", "تناول paracetamol 500mg كل 6 ساعات.", "ECG طبيعي"]


def _random_sentences(n, seed):
    rnd = random.Random(seed)
    words = [w for s in AR + EN + MIXED for w in s.split()] + ["،", "؟", "!", "(", "-", ""]
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(0, 10))) for _ in range(n)]


# -----------------------------------------------------------------------------
# chrF / chrF++


@pytest.mark.parametrize("word_order", [0, 2])
@pytest.mark.parametrize("eps_smoothing", [False, True])
def test_sentence_chrf_matches_sacrebleu(word_order, eps_smoothing):
    ref_metric = CHRF(word_order=word_order, eps_smoothing=eps_smoothing)
    pairs = [(AR[0], [AR[0]]), (AR[0], [AR[4]]), (AR[1], [AR[2], AR[1][:10]]), (EN[0], [EN[1]]),
             (EN[2], [EN[2].upper()]), (MIXED[0], [MIXED[1], MIXED[2]]), ("", [AR[0]]), (AR[3], [""]),
             ("", [""]), ("a", ["a"]), ("ab", ["abc"]), ("  ألم  \n في ", ["ألم في"])]
    hyps, refs = _random_sentences(150, 0), _random_sentences(150, 1)
    pairs += [(h, [r]) for h, r in zip(hyps, refs)]
    pairs += [(h, [r, r2]) for h, r, r2 in zip(hyps[:40], refs[40:80], refs[80:120])]
    for hyp, refs_ in pairs:
        expected = ref_metric.sentence_score(hyp, refs_).score
        got = M.sentence_chrf(hyp, refs_, word_order=word_order, eps_smoothing=eps_smoothing)
        assert got == pytest.approx(expected, abs=CHRF_ATOL), (hyp, refs_)


@pytest.mark.parametrize("word_order", [0, 2])
def test_corpus_chrf_matches_sacrebleu(word_order):
    ref_metric = CHRF(word_order=word_order)
    hyps = AR + EN + MIXED + ["", "ألم"] + _random_sentences(60, 2)
    refs = list(reversed(AR + EN + MIXED)) + [AR[0], ""] + _random_sentences(60, 3)
    expected = ref_metric.corpus_score(hyps, [refs]).score
    assert M.corpus_chrf(hyps, refs, word_order=word_order) == pytest.approx(expected, abs=CHRF_ATOL)
    # corpus chrF is not the mean of sentence chrF (statistics are summed first): 1e-3 is 10 orders above
    # the float64 rounding of either
    mean_sentence = np.mean([M.sentence_chrf(h, r, word_order=word_order) for h, r in zip(hyps, refs)])
    assert abs(mean_sentence - expected) > 1e-3
    # several references per sentence: sacrebleu takes one stream per reference
    refs2 = _random_sentences(len(hyps), 4)
    expected2 = ref_metric.corpus_score(hyps, [refs, refs2]).score
    assert M.corpus_chrf(hyps, [[a, b] for a, b in zip(refs, refs2)], word_order=word_order) == \
        pytest.approx(expected2, abs=CHRF_ATOL)


def test_chrf_bootstrap_resample_is_corpus_chrf_of_the_resampled_corpus():
    """The cheap resample (summed per-sentence statistics) equals sacrebleu on the resampled text."""
    hyps, refs = _random_sentences(30, 5), _random_sentences(30, 6)
    stats = M.corpus_chrf_stats(hyps, refs, word_order=2)
    counts = M.resample_counts(len(hyps), 3, seed=1)
    for row in counts:
        picked = [i for i, c in enumerate(row) for _ in range(int(c))]
        expected = CHRF(word_order=2).corpus_score([hyps[i] for i in picked], [[refs[i] for i in picked]]).score
        # row @ stats: float64 sums of integer products < 2**53, exact
        assert M.chrf_from_stats(row @ stats, word_order=2) == pytest.approx(expected, abs=CHRF_ATOL)


# -----------------------------------------------------------------------------
# ROUGE-L


def test_rouge_l_identical_disjoint_and_hand_computed():
    # exact where P and R are one correctly rounded division each and F = 2PR / (P + R) is exact (P = R =
    # 1 or 1/2); otherwise F is 4 roundings from the exact fraction
    assert M.rouge_l(AR[0], AR[0])["fmeasure"] == 1.0
    assert M.rouge_l("ألم في الصدر", "صداع خفيف")["fmeasure"] == 0.0
    # hyp a b c d e, ref a c e f: LCS = a c e = 3 -> P = 3/5, R = 3/4, F = 2PR/(P+R) = 2/3
    r = M.rouge_l("ألم شديد في الصدر اليوم", "ألم في اليوم فقط")
    assert r["precision"] == 3 / 5
    assert r["recall"] == 3 / 4
    assert r["fmeasure"] == within_roundings(2 / 3, 4)
    # order matters (subsequence, not bag of words): LCS of a b c / c b a is 1
    assert M.rouge_l("ألم في الصدر", "الصدر في ألم")["fmeasure"] == within_roundings(1 / 3, 4)
    assert M.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert M.rouge_l("", AR[0])["fmeasure"] == 0.0


def test_rouge_tokens_keep_arabic_and_drop_arabic_punctuation():
    text = "هل الصداع خطير؟ أعاني منه، كل يوم؛ «ما» العلاج؟ Fever!"
    assert M.arabic_tokens(text) == ["هل", "الصداع", "خطير", "أعاني", "منه", "كل", "يوم", "ما", "العلاج", "fever"]
    # rouge-score's default tokenizer keeps only [a-z0-9]: all the Arabic would be gone
    import re
    assert re.sub(r"[^a-z0-9]+", " ", text.lower()).split() == ["fever"]
    # punctuation does not change the score; normalization unifies spelling variants
    # (P = R = 1 or 1/2: F = 2PR / (P + R) is exact)
    assert M.rouge_l("ألم في الصدر!", "ألم، في الصدر")["fmeasure"] == 1.0
    assert M.rouge_l("الْحُمَّى شديدة", "الحمى شديدة")["fmeasure"] == 0.5
    assert M.rouge_l("الْحُمَّى شديدة", "الحمى شديده", normalize=True)["fmeasure"] == 1.0


# -----------------------------------------------------------------------------
# BERTScore vs bert-score on real weights (all-MiniLM-L6-v2)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return M.load_bertscore_model(minilm_dir, layer=6)[:3]  # all 6 layers kept


@pytest.fixture(scope="module")
def minilm64(minilm):
    """The same model in float64 (compared with bert-score run in float64)."""
    return copy.deepcopy(minilm[0]).double()


def bert_score_float64(monkeypatch):
    """bert-score runs in float64 from here on: its model as a float64 copy, and its idf weights padded
    as float64 (it pads them as float32). Its sums are then float64 ones, far below float32_matching_tol."""
    import bert_score.utils as U
    S = importlib.import_module("bert_score.score")  # the module (bert_score.score is also the function)
    get_model, padding = S.get_model, U.padding
    monkeypatch.setattr(S, "get_model", lambda *a, **k: get_model(*a, **k).double())
    monkeypatch.setattr(U, "padding", lambda arr, pad_token, dtype=torch.long: padding(
        arr, pad_token, torch.float64 if dtype == torch.float32 else dtype))


def _bert_score_reference(monkeypatch, minilm_dir, cands, refs, layer, idf, float64=True):
    bert_score = pytest.importorskip("bert_score")
    import bert_score.utils as U
    original = U.sent_encode

    def sent_encode(tokenizer, sent):  # bert-score 0.3.13 + transformers 5: empty text breaks
        if sent.strip() == "":
            return [tokenizer.cls_token_id, tokenizer.sep_token_id]
        return original(tokenizer, sent)

    monkeypatch.setattr(U, "sent_encode", sent_encode)
    if float64:
        bert_score_float64(monkeypatch)
    P, R, F = bert_score.score(cands, refs, model_type=str(minilm_dir), num_layers=layer, idf=idf,
                               lang=None, batch_size=3, nthreads=0, rescale_with_baseline=False)
    assert P.dtype == (torch.float64 if float64 else torch.float32)
    return P.numpy(), R.numpy(), F.numpy()


def float32_matching_tol(T, C=384):
    """|our BERTScore - bert-score's|, both fed float64 hidden states (a float64 model each; they agree
    within 9e-11, measured 7e-15: tests/test_bert.py): core/metrics.py rounds them to float32 and does
    the matching in float32 (bert-score here in float64). Independent roundings add in quadrature, so a float32 sum of n
    terms is off by about sqrt(n) u32 of the sum of their sizes (the worst case, n u32, is ~20x more and
    far from reached): a cosine goes through three sums of C terms of total size <= 1 (two norms, the dot
    product), 3 sqrt(C) u32; P and R then through two sums of T terms (weighted maxima <= 1, weights):
    + 2 sqrt(T) u32; F = 2PR / (P + R) moves by at most twice the larger. For MiniLM (C = 384) and T <= 512
    tokens: <= 1.2e-5, measured 2026-12-06: <= 1.7e-7. A real error (a wrong layer, a missing idf weight,
    swapped P and R, [CLS] weighted, a token cut) moves scores by >~ 1e-3."""
    return 2 * (3 * math.sqrt(C) + 2 * math.sqrt(T)) * U32


def rebatched_tol(T, C=384):
    """|two BERTScores of the same pair| from a float64 model whose hidden states differ by float64 rounding
    (other batches, other padding): rounded to float32 each component is equal or one float32 step (2 u32
    of its size) apart, which moves the norms by <= 2 u32, a cosine by <= 6 u32, P and R as much and F by
    twice: 12 u32; the float32 matching then rounds the two differently where they differ
    (float32_matching_tol). Measured 2026-12-06: 0 (no component crossed a float32 rounding boundary)."""
    return 12 * U32 + float32_matching_tol(T, C)


def longest(tok, max_len, *texts):
    """The most tokens of a BERTScore input among texts (strings or lists of strings)."""
    flat = [t for x in texts for t in ([x] if isinstance(x, str) else x)]
    return max(len(M.bertscore_encode(tok, t, max_len)) for t in flat)


CANDS = [AR[0], "", AR[1], "ألم في الصدر", EN[0], MIXED[0], "hello world ألم", AR[2] + " " + AR[0]]
REFS = [[AR[0][:20], AR[4]], [AR[3]], [AR[2]], ["ألم شديد في الصدر مع ضيق التنفس"],
        ["a cat sat down on a mat", "the cat"], [MIXED[1]], ["مرحبا hello"], [AR[4], AR[1], AR[3]]]


@pytest.mark.parametrize("layer,idf", [(4, False), (6, True)])
def test_bertscore_matches_bert_score(monkeypatch, minilm_dir, minilm, minilm64, layer, idf):
    _, tok, max_len = minilm
    expected = _bert_score_reference(monkeypatch, minilm_dir, CANDS, REFS, layer, idf)
    got = M.bertscore(CANDS, REFS, minilm64, tok, layer, idf=idf, batch_size=2, max_length=max_len)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=float32_matching_tol(longest(tok, max_len, *CANDS, *REFS)), rtol=0)
    P, R, F = got
    assert P[1] == R[1] == F[1] == 0.0  # the empty candidate
    assert 0.5 < F[0] < 1.0 and abs(F[0] - F[2]) > 1e-3  # real numbers, not a constant (far above the rounding)


def test_bertscore_truncates_long_texts_as_bert_score(monkeypatch, minilm_dir, minilm, minilm64):
    """Texts longer than the tokenizer's model_max_length (512 with [CLS]/[SEP]) are cut as
    bert-score's tokenizer call cuts them (the end is lost), on both sides."""
    model, tok, max_len = minilm
    long1, long2 = " ".join([AR[0]] * 60), " ".join([AR[4], EN[0]] * 60)
    cands, refs = [long1, AR[1], long2], [long2, long1, AR[2]]
    assert max_len == 512 and len(M.bertscore_encode(tok, long1, max_len)) == 512 < len(tok.encode(long1)) + 2
    expected = _bert_score_reference(monkeypatch, minilm_dir, cands, refs, 6, False)
    got = M.bertscore(cands, refs, minilm64, tok, 6, max_length=max_len)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=float32_matching_tol(512), rtol=0)


def test_bertscore_single_reference_and_identity(minilm):
    model, tok, max_len = minilm
    P, R, F = M.bertscore([AR[0], AR[1]], [AR[0], AR[0]], model, tok, 3, max_length=max_len)
    # the same embeddings on both sides: each token's best match is itself, cosine 1 up to the float32
    # rounding of the matching (float32_matching_tol)
    tol = float32_matching_tol(longest(tok, max_len, AR[0]))
    assert P[0] == pytest.approx(1.0, abs=tol) and F[0] == pytest.approx(1.0, abs=tol)
    assert F[1] < 0.99
    # single references given as strings or one-element lists agree: the same computation, exactly
    P2, R2, F2 = M.bertscore([AR[0], AR[1]], [[AR[0]], [AR[0]]], model, tok, 3, max_length=max_len)
    np.testing.assert_array_equal(F, F2)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        M.bertscore([AR[0]], [AR[0]], model, tok, 7)


def test_bertscore_model_keeps_only_the_layers_needed(minilm_dir, minilm):
    """Dropping the layers above the one scored (as bert-score does) changes nothing."""
    full, tok, max_len = minilm
    short, _, _, layer = M.load_bertscore_model(minilm_dir, layer=2)
    assert layer == 2 and len(short.encoder.layer) == 2
    a = M.bertscore(CANDS[:3], REFS[:3], full, tok, 2, max_length=max_len)
    b = M.bertscore(CANDS[:3], REFS[:3], short, tok, 2, max_length=max_len)
    np.testing.assert_array_equal(a, b)  # layers 1-2 computed by the same operations: exactly equal
    # batching and chunking change nothing: other batches pad other sentences, so the two are run on a
    # float64 copy, whose hidden states then differ by ~1e-15 (test_bert.py); rounded to float32
    # (bert_embeddings) each component is equal or one float32 step (2 u32 of its size) apart
    a = M.bertscore(CANDS[:3], REFS[:3], copy.deepcopy(short).double(), tok, 2, max_length=max_len)
    c = M.bertscore(CANDS[:3], REFS[:3], copy.deepcopy(short).double(), tok, 2, max_length=max_len, batch_size=1,
                    chunk_size=1)
    np.testing.assert_allclose(a, c, atol=rebatched_tol(longest(tok, max_len, *CANDS[:3], *REFS[:3])), rtol=0)
    assert M.default_bertscore_layer(minilm_dir, full.config) == 6  # not multilingual BERT: the last layer
    with pytest.raises(ValueError, match="out of range"):
        M.load_bertscore_model(minilm_dir, layer=7)


def test_bertscore_idf_weights_hand_computed():
    refs = [[101, 5, 6, 102], [101, 5, 5, 102], [101, 7, 102]]
    table, unseen = M.idf_weights(refs)
    assert table[101] == 0.0 and table[102] == 0.0  # in every reference
    # math.log and numpy's log each within one float64 step (2 u) of the exact value: 4 u apart at most
    assert table[5] == within_roundings(np.log(4 / 3), 4)  # counted once per sentence: df = 2
    assert table[7] == within_roundings(np.log(4 / 2), 4)
    assert unseen == within_roundings(np.log(4), 4)


def test_bertscore_config_string_and_default_layer():
    class Cfg:
        vocab_size, num_hidden_layers = 119547, 12
    assert M.default_bertscore_layer("/models/bert-base-multilingual-cased", Cfg) == 9
    Cfg.vocab_size = 30522
    assert M.default_bertscore_layer("/models/minilm", Cfg) == 12
    s = M.bertscore_config_string("bert-base-multilingual-cased", 9, False)
    assert s.startswith("bert-base-multilingual-cased_L9_no-idf") and "_idf_" in M.bertscore_config_string("x", 3, True)


# -----------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_ci_contains_estimate_and_shrinks():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.6, 0.2, 50), rng.normal(0.6, 0.2, 2000)
    lo_s, hi_s = M.bootstrap_ci(small, n_resamples=1000, seed=1)
    lo_l, hi_l = M.bootstrap_ci(large, n_resamples=1000, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)  # ~ 1/sqrt(40) = 0.16 as wide (sd of 50 draws: +-10%)
    # the width agrees with the normal approximation 2 * 1.96 * sd / sqrt(n), up to the sampling error of
    # the two percentiles of 1000 resamples: each has standard error sqrt(p (1 - p) / B) / phi(1.96) in
    # units of sd / sqrt(n) (0.085 at p = 0.025), the width sqrt(2) x that = 3.0% of 3.92; allowed: 5 of them
    phi = math.exp(-1.96 ** 2 / 2) / math.sqrt(2 * math.pi)
    rel_se = math.sqrt(2 * 0.025 * 0.975 / 1000) / phi / (2 * 1.96)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / np.sqrt(len(large)), rel=5 * rel_se)
    assert M.bootstrap_ci(small, n_resamples=200, seed=3) == M.bootstrap_ci(small, n_resamples=200, seed=3)
    # corpus chrF interval around the corpus score
    hyps, refs = _random_sentences(80, 7), _random_sentences(80, 8)
    stats = M.corpus_chrf_stats(hyps, refs)
    lo, hi = M.bootstrap_ci(stats, corpus_score=M.chrf_from_stats, n_resamples=300, seed=0)
    assert lo < M.chrf_from_stats(stats.sum(0)) < hi


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 0.7, 200)
    better = a + rng.normal(0.05, 0.05, 200)  # B clearly better on most examples
    res = M.paired_bootstrap(a, better, n_resamples=1000, seed=0)
    # delta: two means of 200 values <= 1.2 summed in another order than numpy's mean (a matrix product):
    # each off by at most 200 u x 1.2, their difference by twice that
    assert res["p_value"] < 0.01 and res["delta"] == pytest.approx(better.mean() - a.mean(), abs=2 * 200 * U64 * 1.2)
    assert np.abs(better).max() <= 1.2
    assert res["ci"][0] < res["delta"] < res["ci"][1]
    # same quality (B is A's values shuffled): no evidence B is better
    same = rng.permutation(a)
    assert M.paired_bootstrap(a, same, n_resamples=1000, seed=0)["p_value"] > 0.1
    # identical systems: never better -> p = 1
    assert M.paired_bootstrap(a, a, n_resamples=100, seed=0)["p_value"] == 1.0  # (100 + 1) / (100 + 1)
    # worse system: p near 1
    assert M.paired_bootstrap(better, a, n_resamples=500, seed=0)["p_value"] > 0.99
    # corpus chrF: the reference itself beats a random hypothesis
    refs = _random_sentences(60, 9)
    sa = M.corpus_chrf_stats(_random_sentences(60, 10), refs)
    sb = M.corpus_chrf_stats([r + " ألم" for r in refs], refs)
    assert M.paired_bootstrap(sa, sb, corpus_score=M.chrf_from_stats, n_resamples=300)["p_value"] < 0.01


# -----------------------------------------------------------------------------
# Urgent-advice rates


def test_urgent_rates_hand_computed():
    flags = M.urgent_flags(["go now", "rest", "go", "rest", "go"], detector=lambda t: t.startswith("go"))
    rates = M.urgent_rates(flags, ["critical", "critical", "mild", "mild", None])
    assert rates == {"overall": 3 / 5, "mild": 0.5, "moderate": None, "critical": 0.5}


def test_urgent_flags_use_the_lexicon():
    from core import lexicon  # (was importorskip("lexicon"): always skipped since the module moved to core/)
    catch = "يجب التوجه إلى قسم الطوارئ فورا"
    miss = "اشرب الكثير من الماء واسترح في البيت"
    assert lexicon.mentions_urgent_care(catch) and not lexicon.mentions_urgent_care(miss)
    np.testing.assert_array_equal(M.urgent_flags([catch, miss, catch]), [1.0, 0.0, 1.0])


def test_bootstrap_in_blocks_equals_one_block(monkeypatch):
    """Resamples are drawn in blocks (430k rows x 1000 resamples would be 3.4 GB at once); the
    blocks are the same draws, so intervals and p-values do not depend on the block size."""
    rng = np.random.default_rng(0)
    a = rng.random(300)
    b = a + rng.normal(0.02, 0.1, 300)
    whole_counts = M.resample_counts(300, 50, seed=4)
    whole = M.bootstrap_ci(a, n_resamples=200, seed=4), M.paired_bootstrap(a, b, n_resamples=200, seed=4)
    monkeypatch.setattr(M, "RESAMPLE_BLOCK_ELEMENTS", 300 * 7)  # blocks of 7 resamples
    assert np.array_equal(M.resample_counts(300, 50, seed=4), whole_counts)
    blocked = M.bootstrap_ci(a, n_resamples=200, seed=4), M.paired_bootstrap(a, b, n_resamples=200, seed=4)
    # the same counts; a block's matrix product may sum each resample's 300 terms count x value (total
    # size <= 300 x 1.4) in another order: a resampled mean moves by <= 300 u x 1.4, a difference of two
    # by twice that; the percentiles interpolate linearly between such values
    assert max(np.abs(a).max(), np.abs(b).max()) <= 1.4
    assert blocked[0] == pytest.approx(whole[0], abs=300 * U64 * 1.4)
    assert blocked[1]["p_value"] == whole[1]["p_value"]
    assert blocked[1]["ci"] == pytest.approx(whole[1]["ci"], abs=2 * 300 * U64 * 1.4)

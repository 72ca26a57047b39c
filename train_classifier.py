"""Fine-tune a BERT severity classifier (mild / moderate / critical) on labeled JSONL rows.

Reads rows written by prepare_data.py (fields: `question`, `split`, `severity`; every other field
is ignored) and trains BERT + a linear head on [CLS] (BertForSequenceClassification):

    train split -> training          val split -> early stopping and temperature fitting
    test split  -> final numbers only

Run it:

    # CPU, no pretrained model: a small BERT (hidden 128, 2 layers) and a WordPiece vocabulary
    # trained from scratch on the training questions -- offline, a few minutes at most
    python train_classifier.py --data out/demo/labeled.jsonl --out out/demo/classifier

    # one GPU, AraBERT (a local Hugging Face folder; nothing is downloaded)
    python train_classifier.py --data labeled.jsonl --model models/bert-base-arabertv02 \
        --out runs/classifier --epochs 4 --batch-size 32 --lr 3e-5 --device cuda

    N GPUs: not supported -- the classifier is small next to the language model, so this script
    is single-process (under torchrun with more than one process it stops with a message).
    Scoring the full corpus (score_severity.py) is the part that runs on N GPUs.

Labels: `severity` must be one of common.SEVERITIES; label id c = SEVERITIES[c] (0 mild,
1 moderate, 2 critical) everywhere (logits, confusion matrix, severity_probs).

Gold labels (clinicians' labels: review.py results -> prepare_data.py --gold, severity_source
"gold"): a row trains on its gold label where it has one and on its rule label otherwise; gold
and rule rows are shuffled into the same batches, a gold row's loss counting --gold-weight times
a rule row's (default 1). Early stopping and calibration use the whole val split; metrics.json
also reports val and test on the gold rows alone (val_gold, test_gold). docs/review.md.

Training: AdamW (weight decay on weight matrices only, not on biases and LayerNorms), linear warmup
for --warmup of the steps then linear decay to 0, gradient clipping at 1.0, bf16 autocast on
CUDA GPUs that support it (fp32 elsewhere). By default the loss is inverse-frequency
class-weighted cross-entropy, weight_c = N_train / (3 * count_c) (a class absent from the train
split gets weight 0), averaged as F.cross_entropy does (sum of w_y * ce / sum of w_y), so the rare
critical class is not drowned by the mild majority; --no-class-weights gives plain cross-entropy.
After each epoch the val split is scored; the weights with the best val macro-F1 are kept, and
training stops after --patience epochs without improvement.

Defaults that learn on small data (the --epochs of old gave 100 rows 30 optimizer steps, and the
classifier learned nothing): batch 16, lr 1e-3 from scratch, --epochs = enough for 400 optimizer
steps (10 to 100 epochs), --patience = a quarter of that (at least 3). The from-scratch WordPiece
vocabulary keeps every word of the training questions (frequent first, up to --vocab-size), so a
word seen in one training row is one token, not a string of letters.

Text preprocessing (--preprocess): `arabert` applies AraBERT v2's own preprocessing
(classifier.arabert_preprocess) so fine-tuning sees text as AraBERT saw it in pretraining; `none`
leaves the text as is; `auto` (default) = arabert when the --model folder name contains
"arabert". The choice is stored in the saved config.json ("severity_preprocess") and
score_severity.py applies the same one. Sequences are cut to --max-len tokens ([CLS] and [SEP]
included); how many were cut is printed and stored in metrics.json.

Metrics (val and test): accuracy, macro-F1 (mean F1 over the three classes, a class with no true
and no predicted rows counts as F1 = 0), per-class precision/recall/F1/support (precision of a
class never predicted = 0), confusion matrix (rows = true, columns = predicted, SEVERITIES order),
NLL, and expected calibration error (ECE) before and after temperature scaling. ECE is top-label
ECE with 15 equal-width confidence bins (lo, hi]: sum over bins of |bin| / N * |accuracy(bin) -
mean confidence(bin)|, confidence = the largest probability. Macro-F1 and critical recall also
get 95% bootstrap intervals over rows (macro_f1_ci, critical_recall_ci; 1000 resamples).

Calibration must not make things worse (core/calibration.py): T is fitted on the val logits by
minimizing the NLL of softmax(logits / T) over log T with L-BFGS (float64) within [0.05, 20], and
kept only if it lies strictly inside those bounds AND lowers the NLL on val rows it was not
fitted on (5-fold cross-validation over the val split, against T = 1 on the same rows);
otherwise T = 1, a warning, and metrics.json "temperature_check" says why. Calibrated
probabilities are softmax(logits / T).

Writes --out (a folder, replaced atomically when complete):
    config.json, model.safetensors, tokenizer files   a Hugging Face BertForSequenceClassification
        folder (id2label {0: mild, 1: moderate, 2: critical}; transformers opens it), with extra
        config fields severity_temperature, severity_preprocess, severity_max_len,
        severity_text_field, severity_labels (read back by score_severity.py)
    metrics.json   the numbers above for val and test (and val_gold, test_gold), the temperature and
        temperature_check, class weights, gold_rows, label counts, best epoch, per-epoch history,
        warnings and the resolved arguments.
A loss or gradient norm that is not finite (--lr far too high) stops the run with one line naming
the step and --lr, and nothing is written; bad flag values stop at parsing (docs/reliability.md).
Refused before any work (docs/files.md): an --out that is, holds or lies inside --data or --model,
and a folder that is not a classifier this project wrote holding only these names (a user's
pretrained BERT folder is never written over). A full disk is one line; the old folder stays.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.classifier import (CLASSIFIER_FILES, PREPROCESSORS, autocast, encode_texts, predict_logits, resolve_preprocess,
                        save_classifier, scratch_tokenizer)
from core.agreement import accuracy, bootstrap, confusion_matrix, macro_f1, per_class_prf  # noqa: F401 (tests)
from core.calibration import T_BOUNDS, choose_temperature, fit_temperature, nll  # noqa: F401 (tests)
from core.common import (DEMO_DATA, DataError, HelpFormatter, SEVERITIES, SPLITS, UsageError, check_finite_step,
                         check_finite_weights, device_arg, fraction, non_negative_float, out_path, pad_batch,
                         pick_device, positive_float, positive_int, print0, read_jsonl, run_main, seed_all, seed_int,
                         warn_high_lr)
from core.outputs import check_not_input, check_out_dir, output_lock

MIN_STEPS = 400  # default --epochs: at least this many optimizer steps ...
EPOCH_RANGE = (10, 100)  # ... and between these many epochs
# the from-scratch BERT used when no --model is given (fast on a CPU, enough for the demo)
SMALL_BERT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                  max_position_embeddings=128, hidden_act="gelu", hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, type_vocab_size=2, layer_norm_eps=1e-12,
                  initializer_range=0.02)


# -----------------------------------------------------------------------------
# Metrics (the confusion matrix, per-class P/R/F1 and macro-F1 are core/agreement.py's; tests call these)


def expected_calibration_error(probs, labels, n_bins=15):
    """Top-label ECE: confidence = max prob, bins (i/n, (i+1)/n], sum |bin|/N * |acc - conf|."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).double()
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(conf, inner)  # bin i holds inner[i-1] < conf <= inner[i]
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean().item() * abs(correct[sel].mean().item() - conf[sel].mean().item())
    return ece


def split_metrics(logits, labels, temperature):
    """Every reported number for one split, from its logits [N, 3] and true label ids [N]."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    pred = logits.argmax(-1).tolist()
    y = labels.tolist()
    conf = confusion_matrix(y, pred)
    prf = per_class_prf(conf)
    critical = SEVERITIES.index("critical")

    y_arr, pred_arr = np.array(y, dtype=np.int64), np.array(pred, dtype=np.int64)

    def resampled(idx):  # bootstrap over rows: macro-F1 and critical recall of each resample
        p = per_class_prf(confusion_matrix(y_arr[idx], pred_arr[idx]))
        return {"macro_f1": sum(c["f1"] for c in p) / len(p),
                "critical_recall": p[critical]["recall"] if p[critical]["support"] else None}
    ci = bootstrap(resampled, len(y), n_resamples=1000, seed=0) if y else {}
    return {
        "n": len(y),
        "accuracy": accuracy(y, pred),
        "macro_f1": sum(c["f1"] for c in prf) / len(prf),
        "macro_f1_ci": ci.get("macro_f1"),  # 95% percentile bootstrap over rows (1000 resamples)
        "critical_recall": prf[critical]["recall"],
        "critical_recall_ci": ci.get("critical_recall"),
        # over the classes with at least one true row (the 3-class number counts an absent class as 0)
        "macro_f1_present": (sum(c["f1"] for c in prf if c["support"]) / max(1, sum(1 for c in prf if c["support"]))),
        "per_class": {name: prf[c] for c, name in enumerate(SEVERITIES)},
        "confusion": conf,
        "nll": nll(logits, labels),
        "nll_calibrated": nll(logits, labels, temperature),
        "ece": expected_calibration_error(logits.softmax(-1), labels),
        "ece_calibrated": expected_calibration_error((logits / temperature).softmax(-1), labels),
    }


# -----------------------------------------------------------------------------
# Data, tokenizer, model (the encoding and prediction score_severity.py shares are in core/classifier.py)


def load_labeled(path, text_field="question"):
    """Read labeled rows -> {split: (texts, label_ids, is_gold)}; bad splits or labels raise DataError.
    is_gold: the row's severity_source is "gold" (a clinician's label, prepare_data.py --gold)."""
    data = {s: ([], [], []) for s in SPLITS}
    for lineno, row in read_jsonl(path, required=(text_field, "split")):
        if row["split"] not in SPLITS:
            raise DataError(path, lineno, "split", f"expected one of {SPLITS}, got {row['split']!r}")
        label = row.get("severity")
        if label not in SEVERITIES:
            problem = "missing" if "severity" not in row else f"got {label!r}"
            raise DataError(path, lineno, "severity", f"expected one of {SEVERITIES}: {problem}")
        data[row["split"]][0].append(row[text_field])
        data[row["split"]][1].append(SEVERITIES.index(label))
        data[row["split"]][2].append(row.get("severity_source") == "gold")
    for split in ("train", "val"):
        if not data[split][0]:
            raise DataError(path, None, "split", f"no rows in the {split!r} split (train and val are required)")
    return data


def build_classifier(model_folder, vocab_size, max_len, pad_id):
    """BertForSequenceClassification with a fresh 3-way head: on the encoder of a BERT folder
    (AraBERT) when given, else a small BERT initialized from scratch."""
    from models import load_pretrained
    from models.bert import BertConfig, BertForSequenceClassification

    labels = dict(id2label={i: s for i, s in enumerate(SEVERITIES)}, label2id={s: i for i, s in enumerate(SEVERITIES)})
    if model_folder is None:
        config = BertConfig.from_dict(dict(SMALL_BERT, vocab_size=vocab_size, pad_token_id=pad_id,
                                           max_position_embeddings=max(SMALL_BERT["max_position_embeddings"], max_len),
                                           **labels))
        return BertForSequenceClassification(config), None
    encoder, tokenizer = load_pretrained(model_folder, expect="bert")
    if not isinstance(encoder.config, BertConfig):
        raise UsageError(f"{model_folder}: not a BERT model folder (model_type must be 'bert')")
    encoder = getattr(encoder, "bert", encoder)  # a BertModel, or the encoder of a classifier folder
    return BertForSequenceClassification.from_encoder(encoder, labels["id2label"]), tokenizer


def epoch_budget(steps_per_epoch, epochs=None, patience=None):
    """(epochs, patience), the flags' values where given. Default epochs: enough for MIN_STEPS
    optimizer steps, within EPOCH_RANGE (a fixed epoch count gives 100 rows 30 steps: nothing is
    learned; 400k rows 10 epochs is plenty); default patience: a quarter of that, at least 3."""
    auto = min(max(math.ceil(MIN_STEPS / max(1, steps_per_epoch)), EPOCH_RANGE[0]), EPOCH_RANGE[1])
    epochs = epochs if epochs is not None else auto
    return epochs, patience if patience is not None else max(3, auto // 4)


def lr_at(step, total_steps, warmup_steps, peak_lr):
    """Linear warmup from 0 to peak_lr over warmup_steps, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # --help shows the defaults
    parser.add_argument("--data", default=str(DEMO_DATA), help="labeled JSONL (question, split, severity)")
    parser.add_argument("--out", default="out/classifier", type=out_path,
                        help="output folder (Hugging Face layout + metrics.json)")
    parser.add_argument("--model", default=None, help="BERT folder to fine-tune (e.g. bert-base-arabertv02); "
                                                      "default: a small BERT trained from scratch")
    parser.add_argument("--text-field", default="question", help="the row field holding the text to classify")
    parser.add_argument("--preprocess", default="auto", choices=["auto", "arabert", "none"],
                        help="text preprocessing; auto = arabert when the --model folder name contains 'arabert'")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"maximum number of epochs (default: enough for {MIN_STEPS} optimizer steps, "
                             f"between {EPOCH_RANGE[0]} and {EPOCH_RANGE[1]})")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="training batch size")
    parser.add_argument("--eval-batch-size", type=positive_int, default=128, help="batch size for val/test scoring")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="peak learning rate (default 3e-5 with --model, 1e-3 from scratch)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.01,
                        help="AdamW weight decay (weight matrices only)")
    parser.add_argument("--warmup", type=fraction, default=0.1,
                        help="fraction of the training steps spent in linear warmup")
    parser.add_argument("--max-len", type=positive_int, default=128,
                        help="maximum tokens per text, [CLS] and [SEP] included")
    parser.add_argument("--patience", type=positive_int, default=None,
                        help="stop after this many epochs without a better val macro-F1 (default: a quarter of "
                             "the --epochs default, at least 3)")
    parser.add_argument("--gold-weight", type=non_negative_float, default=1.0,
                        help="loss weight of a gold-labelled train row (severity_source gold) next to a rule row's 1")
    parser.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                        help="plain cross-entropy instead of inverse-frequency class-weighted cross-entropy")
    parser.add_argument("--vocab-size", type=positive_int, default=3000,
                        help="WordPiece vocabulary size (from-scratch BERT only)")
    parser.add_argument("--seed", type=seed_int, default=1337, help="random seed (init, shuffling, dropout)")
    parser.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:1, mps")
    args = parser.parse_args(argv)
    if args.max_len < 3:
        parser.error("--max-len must be >= 3 ([CLS], a token, [SEP])")
    if args.lr is not None:
        warn_high_lr(args.lr)

    # setup
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("train_classifier.py is single-process: run it with python, not torchrun with N > 1")
    check_out_dir(args.out, "classifier", CLASSIFIER_FILES)  # before any work: only a classifier folder is replaced
    check_not_input(args.out, {"--data": args.data, "--model": args.model})
    with output_lock(args.out):  # two runs cannot write the same --out
        return train(args)


def load_splits(args, preprocess):
    """Data: the labelled rows of each split, preprocessed. Returns per split the texts, the labels (a
    long tensor of class ids), the count of each class and which rows are gold (a bool tensor)."""
    data = load_labeled(args.data, args.text_field)
    texts = {s: [preprocess(t) for t in data[s][0]] for s in SPLITS}
    labels = {s: torch.tensor(data[s][1], dtype=torch.long) for s in SPLITS}
    counts = {s: [int((labels[s] == c).sum()) for c in range(len(SEVERITIES))] for s in SPLITS}
    gold = {s: torch.tensor(data[s][2], dtype=torch.bool) for s in SPLITS}
    print0("rows: " + ", ".join(f"{s} {len(texts[s])} {dict(zip(SEVERITIES, counts[s]))}" for s in SPLITS)
           + (f"; gold rows {dict((s, int(gold[s].sum())) for s in SPLITS)}" if any(g.any() for g in gold.values())
              else ""))
    return texts, labels, counts, gold


def model_and_inputs(args, texts, device):
    """The model (--model's encoder with a new head, or a small BERT from scratch with a WordPiece
    vocabulary trained on the training texts) and every split's texts as token ids, cut to --max-len
    (at most the model's positions). Returns (model on device, tokenizer, seqs, cut, max_len, pad_id)."""
    if args.model is None:
        tokenizer = scratch_tokenizer(texts["train"], args.vocab_size, args.max_len)
        model, _ = build_classifier(None, tokenizer.vocab_size, args.max_len, tokenizer.pad_id)
    else:
        model, tokenizer = build_classifier(args.model, None, args.max_len, None)
    max_len = min(args.max_len, model.config.max_position_embeddings)
    if max_len < args.max_len:
        print0(f"--max-len {args.max_len} > the model's {max_len} positions: using {max_len}")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    model.to(device)
    seqs, cut = {}, {}
    for s in SPLITS:
        seqs[s], cut[s] = encode_texts(tokenizer, texts[s], max_len)
    if any(cut.values()):
        print0(f"texts cut to {max_len} tokens: {cut}")
    return model, tokenizer, seqs, cut, max_len, pad_id


def fit(args, model, seqs, labels, weight, row_weight, pad_id, lr, device, t0):
    """The loop: AdamW (decay on weight matrices: linear, embeddings; not on biases and LayerNorm
    gains), warmup then linear decay (lr_at), shuffled batches, the weighted cross-entropy, and after
    each epoch the val macro-F1; stops after --patience epochs without a better one. The model ends
    with its best epoch's weights. Returns (best_epoch, history: one record per epoch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                  fused=device.type == "cuda")
    n_train = len(seqs["train"])
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    args.epochs, args.patience = epoch_budget(steps_per_epoch, args.epochs, args.patience)
    print0(f"{args.epochs} epochs at most ({steps_per_epoch} steps each), "
           f"early stop after {args.patience} without progress")
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = max(1, int(args.warmup * total_steps))
    gen = torch.Generator().manual_seed(args.seed)
    best_f1, best_epoch, best_state, history, step = -1.0, 0, None, [], 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(n_train, generator=gen).tolist()
        loss_sum = 0.0
        for start in tqdm(range(0, n_train, args.batch_size), desc=f"epoch {epoch}", leave=False):
            idx = perm[start:start + args.batch_size]
            ids, mask = pad_batch([seqs["train"][i] for i in idx], pad_id, device)
            y = labels["train"][idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, lr)
            with autocast(device):
                logits = model(ids, attention_mask=mask)
            # weighted mean: sum_i g_i w_{y_i} ce_i / sum_i g_i w_{y_i} (g_i = --gold-weight on gold rows, else 1)
            w_i = weight[y] * row_weight[idx].to(device)
            loss = (w_i * F.cross_entropy(logits.float(), y, reduction="none")).sum() / w_i.sum().clamp_min(1e-12)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            loss_value, norm_value = torch.stack([loss.detach(), grad_norm.detach()]).tolist()  # one host sync
            check_finite_step(step + 1, loss_value, norm_value, f"lower --lr (now {lr:g})")  # never an all-NaN model
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss_value
            step += 1
        val_logits = predict_logits(model, seqs["val"], pad_id, args.eval_batch_size, device)
        val_pred = val_logits.argmax(-1).tolist()
        val_f1, val_acc = macro_f1(labels["val"].tolist(), val_pred), accuracy(labels["val"].tolist(), val_pred)
        record = dict(epoch=epoch, step=step, train_loss=loss_sum / steps_per_epoch, val_macro_f1=val_f1,
                      val_accuracy=val_acc, grad_norm=float(grad_norm), lr=lr_at(step - 1, total_steps, warmup_steps, lr),
                      time_s=round(time.time() - t0, 1))
        history.append(record)
        improved = val_f1 > best_f1
        print0(f"epoch {epoch:3d} | train loss {record['train_loss']:.4f} | val macro-F1 {val_f1:.4f} "
               f"acc {val_acc:.4f}{' *' if improved else ''} | {record['time_s']:.0f}s")
        if improved:
            best_f1, best_epoch = val_f1, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= args.patience:
            print0(f"early stop: no better val macro-F1 for {args.patience} epochs")
            break
    model.load_state_dict(best_state)
    check_finite_weights(model, step, f"lower --lr (now {lr:g})")
    return best_epoch, history


def train(args):
    """The run: data, model, class weights, the loop (fit), then temperature scaling on val, the
    final numbers and the saved folder. Returns metrics.json's dict."""
    seed_all(args.seed)
    device = pick_device(args.device)
    lr = args.lr if args.lr is not None else (3e-5 if args.model else 1e-3)
    preprocess_name = resolve_preprocess(args.preprocess, args.model)
    t0 = time.time()
    texts, labels, counts, gold = load_splits(args, PREPROCESSORS[preprocess_name])
    model, tokenizer, seqs, cut, max_len, pad_id = model_and_inputs(args, texts, device)
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {args.model or 'small BERT from scratch'} ({n_params / 1e6:.2f}M parameters, "
           f"vocab {tokenizer.vocab_size}), preprocess={preprocess_name}, device={device}, lr={lr:g}")

    # loss weights: inverse class frequency on the train split, N / (K * n_c); absent class -> 0
    n_train = len(seqs["train"])
    if args.class_weights:
        class_weights = [n_train / (len(SEVERITIES) * n) if n else 0.0 for n in counts["train"]]
    else:
        class_weights = [1.0] * len(SEVERITIES)
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device)
    # gold and rule rows are mixed in the same shuffled batches; a gold row's loss counts --gold-weight times
    row_weight = torch.where(gold["train"], args.gold_weight, 1.0).float()
    best_epoch, history = fit(args, model, seqs, labels, weight, row_weight, pad_id, lr, device, t0)

    # calibration and final numbers
    logits = {s: predict_logits(model, seqs[s], pad_id, args.eval_batch_size, device) for s in ("val", "test")}
    temperature, temperature_check = choose_temperature(logits["val"], labels["val"], seed=args.seed)
    metrics = {
        "labels": list(SEVERITIES),
        "temperature": temperature,
        "temperature_check": temperature_check,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "val": split_metrics(logits["val"], labels["val"], temperature),
        "test": split_metrics(logits["test"], labels["test"], temperature) if len(seqs["test"]) else None,
        # the same numbers on the clinicians' gold rows alone (None when a split has none)
        **{f"{s}_gold": split_metrics(logits[s][gold[s]], labels[s][gold[s]], temperature) if gold[s].any() else None
           for s in ("val", "test")},
        "gold_rows": {s: int(gold[s].sum()) for s in SPLITS},
        "gold_weight": args.gold_weight,
        "class_weights": dict(zip(SEVERITIES, class_weights)),
        "counts": {s: dict(zip(SEVERITIES, counts[s])) for s in SPLITS},
        "truncated": cut,
        "max_len": max_len,
        "preprocess": preprocess_name,
        "history": history,
        "args": vars(args),
    }
    metrics["warnings"] = run_warnings(metrics, history)
    for s in ("val", "test", "val_gold", "test_gold"):
        m = metrics[s]
        if m:
            print0(f"{s}: accuracy {m['accuracy']:.4f} | macro-F1 {m['macro_f1']:.4f} | ECE {m['ece']:.4f} -> "
                   f"{m['ece_calibrated']:.4f} (T = {temperature:.3f}) | confusion {m['confusion']}")

    for w in metrics["warnings"]:
        print0(f"WARNING: {w}")
    # save: HF folder + our extra config fields + metrics.json, swapped into place when complete
    save_classifier(model.cpu(), tokenizer, args.out, metrics,
                    extra_config=dict(severity_temperature=temperature, severity_preprocess=preprocess_name,
                                      severity_max_len=max_len, severity_text_field=args.text_field,
                                      severity_labels=list(SEVERITIES)))
    print0(f"saved {args.out} ({time.time() - t0:.0f}s)")
    return metrics


def run_warnings(metrics, history):
    """What makes a classifier's numbers (and the severity weights built on it) meaningless, in
    words: stored in metrics.json "warnings"; score_severity.py and train_lm.py repeat them."""
    warnings = []
    check = metrics["temperature_check"]
    if not check["kept"]:
        warnings.append(f"temperature not applied: {check['reason']}; the probabilities are not calibrated")
    chance = math.log(len(SEVERITIES))
    if history and history[-1]["train_loss"] > 0.95 * chance:
        warnings.append(f"the training loss stayed at chance ({history[-1]['train_loss']:.3f} vs ln 3 = "
                        f"{chance:.3f}): the classifier learned nothing; train longer, raise --lr or check the labels")
    for split in ("val", "test"):
        m = metrics[split]
        if m is None:
            warnings.append(f"no {split} rows: no {split} numbers")
            continue
        missing = [name for name in SEVERITIES if m["per_class"][name]["support"] == 0]
        if missing:
            warnings.append(f"the {split} split has no {' / '.join(missing)} rows: its 3-class macro-F1 counts them "
                            f"as 0 (macro_f1_present = {m['macro_f1_present']:.4f} over the classes present)")
    if metrics["val"]["n"] < 30:
        warnings.append(f"only {metrics['val']['n']} val rows (< 30): early stopping, the temperature and the "
                        f"val numbers are noise")
    return warnings


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job

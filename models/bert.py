"""BERT encoder, pooler and sequence-classification head in plain PyTorch.

Matches Hugging Face transformers' `BertModel` and `BertForSequenceClassification` (absolute
positions, post-LayerNorm blocks, exact erf GELU) and reads/writes their checkpoint keys
unchanged: attribute names mirror the keys (`embeddings.word_embeddings`,
`encoder.layer.0.attention.self.query`, `pooler.dense`, `classifier`, ...), so there is no
transpose anywhere, only a few renames on load:

- old TensorFlow-era names `LayerNorm.gamma` / `LayerNorm.beta` -> `LayerNorm.weight` / `.bias`;
- a `bert.` prefix is accepted on encoder keys (BertForMaskedLM / BertForPreTraining /
  BertForSequenceClassification checkpoints) and also accepted missing (a plain BertModel);
- ignored: the `embeddings.position_ids` / `embeddings.token_type_ids` buffers and the MLM/NSP
  heads (`cls.*`).

Everything else is strict: an unexpected key, a missing key or a shape mismatch raises ValueError
naming the key (and both shapes). One documented exception: a BertModel may load a checkpoint
without pooler weights (saved with add_pooling_layer=False); its pooler is then randomly
initialized, which matters only if you use the pooled output (the classifier does, and
`BertForSequenceClassification.load_hf_state_dict` requires the pooler).
"""
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    """Field names are those of a Hugging Face BERT config.json."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float = None  # None -> hidden_dropout_prob (as in HF)
    id2label: dict = None  # {int id: str label} (or a list of names); None -> HF's 2 default labels
    label2id: dict = None  # {str label: int id}; derived from id2label when None
    architectures: list = None  # ["BertModel"] or ["BertForSequenceClassification"]
    is_decoder: bool = False  # transformers then runs BERT with a causal mask: refused, not ignored
    add_cross_attention: bool = False

    def __post_init__(self):
        for name in ("is_decoder", "add_cross_attention"):
            if getattr(self, name):
                raise ValueError(f"BERT {name}=true (a causal or cross-attending decoder in transformers) is not "
                                 "implemented: this BERT is a bidirectional encoder")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"BERT position_embedding_type {self.position_embedding_type!r} is not "
                             "supported (only 'absolute')")
        if self.hidden_act not in ACT:
            raise ValueError(f"BERT hidden_act {self.hidden_act!r} is not supported ({sorted(ACT)})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.id2label is None:
            self.id2label = {0: "LABEL_0", 1: "LABEL_1"}
        if isinstance(self.id2label, (list, tuple)):
            self.id2label = dict(enumerate(self.id2label))
        self.id2label = {int(i): str(name) for i, name in self.id2label.items()}  # JSON keys are strings
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"id2label ids must be 0..n-1, got {sorted(self.id2label)}")
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.label2id = {str(name): int(i) for name, i in self.label2id.items()}

    @property
    def num_labels(self):
        return len(self.id2label)

    @classmethod
    def from_dict(cls, d):
        """From a config.json dict: known fields are read, unknown keys ignored. A `num_labels`
        without `id2label` gives labels LABEL_0..LABEL_{n-1}, as in transformers."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and d[f.name] is not None}
        if "id2label" not in kw and d.get("num_labels") is not None:
            kw["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        return cls(**kw)

    def to_dict(self):
        d = asdict(self)
        d["id2label"] = {str(i): name for i, name in self.id2label.items()}
        d["model_type"] = "bert"
        d["architectures"] = list(self.architectures or ["BertModel"])
        return d


ACT = {
    "gelu": F.gelu,  # exact (erf) GELU, as BERT was trained
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}: truncate the input")
        pos = torch.arange(T, device=input_ids.device)  # absolute positions; right padding assumed
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(pos)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, mask):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        # mask (B, 1, 1, T), True = real key: every query (padding ones too) attends to the real
        # tokens of its row only, bidirectionally; the 1/sqrt(hs) scale is SDPA's default
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class BertAddNorm(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm (post-LN): HF's BertSelfOutput and BertOutput."""

    def __init__(self, n_in, config):
        super().__init__()
        self.dense = nn.Linear(n_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)  # the checkpoint's key really is attention.self.*
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))  # the [CLS] position


def _init_weights(module, std):
    """HF BERT init: normal(0, initializer_range) weights, zero biases, the padding row zeroed."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _encoder_key(key):
    """A checkpoint key -> our BertModel key, or None for the documented ignored entries."""
    if key.startswith("cls."):  # MLM / NSP heads of BertForMaskedLM / BertForPreTraining
        return None
    if key.startswith("bert."):
        key = key[len("bert."):]
    if key in ("embeddings.position_ids", "embeddings.token_type_ids"):  # buffers, recomputed
        return None
    if key.endswith("LayerNorm.gamma"):
        key = key[:-len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[:-len("beta")] + "bias"
    return key


def _load_strict(module, sd, optional_prefixes=()):
    """Copy {our key: (checkpoint key, tensor)} into module's parameters (casting to their dtype
    and device). Raises ValueError on an unexpected key, a shape mismatch, or a missing key
    that does not start with one of optional_prefixes. Returns the missing optional keys."""
    own = module.state_dict()
    for k, (ck, t) in sd.items():
        if k not in own:
            raise ValueError(f"unexpected key in checkpoint: {ck!r}")
        if tuple(t.shape) != tuple(own[k].shape):
            raise ValueError(f"shape mismatch for {ck!r}: checkpoint {tuple(t.shape)}, "
                             f"model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in sd]
    required = [k for k in missing if not k.startswith(tuple(optional_prefixes))]
    if required:
        more = f" (and {len(required) - 5} more)" if len(required) > 5 else ""
        raise ValueError(f"missing key(s) in checkpoint: {', '.join(required[:5])}{more}")
    with torch.no_grad():
        for k, (ck, t) in sd.items():
            own[k].copy_(t)  # state_dict() tensors share storage with the parameters
    return missing


class BertModel(nn.Module):
    """BERT encoder + pooler. forward returns hidden states; the pooler is applied by callers
    (`model.pooler(hidden)`), as the classification head does."""

    def __init__(self, config):
        super().__init__()
        self.config = replace(config, architectures=["BertModel"])
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(lambda m: _init_weights(m, config.initializer_range))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        """input_ids, attention_mask (1 = real token, 0 = padding), token_type_ids: [B, T] (padding
        on the right, as BERT's absolute positions expect). Returns the last hidden state
        [B, T, C], or with output_hidden_states=True the list of num_hidden_layers + 1 hidden
        states: the embeddings output, then each layer's output (HF's `hidden_states`)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T) True = attend to this key
        x = self.embeddings(input_ids, token_type_ids)
        hidden = [x]
        for block in self.encoder.layer:
            x = block(x, mask)
            hidden.append(x)
        return hidden if output_hidden_states else x

    def load_hf_state_dict(self, sd):
        """Load HF BERT tensors (see the module docstring for accepted key variants). Pooler
        weights may be missing: the pooler is then randomly initialized."""
        ours = {}
        for ck, t in sd.items():
            k = _encoder_key(ck)
            if k is None:
                continue
            if k in ours:
                raise ValueError(f"checkpoint has both {ours[k][0]!r} and {ck!r}")
            ours[k] = (ck, t)
        missing = _load_strict(self, ours, optional_prefixes=("pooler.",))
        if missing:  # (re)initialize: load_pretrained allocates the model without initializing it
            _init_weights(self.pooler.dense, self.config.initializer_range)

    def hf_state_dict(self):
        """{HF BertModel key: tensor} (no prefix, as transformers saves a BertModel)."""
        return dict(self.state_dict())


class BertForSequenceClassification(nn.Module):
    """BERT + pooler + dropout + linear classifier: logits = classifier(dropout(pooler(h)))."""

    def __init__(self, config):
        super().__init__()
        self.config = replace(config, architectures=["BertForSequenceClassification"])
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        _init_weights(self.classifier, config.initializer_range)

    @classmethod
    def from_encoder(cls, encoder, id2label):
        """A classifier on top of a pretrained BertModel (e.g. from load_pretrained on AraBERT).
        id2label: a list of label names (index = class id) or a dict {id: name}. The encoder
        module itself is reused (not copied); the classifier layer is freshly initialized, and
        the pooler is whatever the encoder has (pretrained, or random if its checkpoint had none).
        The result is on the encoder's device and dtype, in train mode like a fresh module."""
        config = replace(encoder.config, id2label=id2label, label2id=None)
        with torch.device("meta"):  # skip building (and randomly initializing) a throwaway encoder
            model = cls(config)
        model.bert = encoder
        w = next(encoder.parameters())
        model.classifier = nn.Linear(config.hidden_size, config.num_labels, device=w.device, dtype=w.dtype)
        _init_weights(model.classifier, config.initializer_range)
        return model.train()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Returns logits [B, num_labels] in fp32 (see BertModel.forward for the inputs)."""
        h = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.bert.pooler(h))).float()

    def load_hf_state_dict(self, sd):
        """Load an HF BertForSequenceClassification checkpoint (encoder keys with or without the
        `bert.` prefix). Strict: the pooler and the classifier must be present."""
        ours = {}
        for ck, t in sd.items():
            if ck.startswith("classifier."):
                k = ck
            else:
                k = _encoder_key(ck)
                if k is None:
                    continue
                k = "bert." + k
            if k in ours:
                raise ValueError(f"checkpoint has both {ours[k][0]!r} and {ck!r}")
            ours[k] = (ck, t)
        _load_strict(self, ours)

    def hf_state_dict(self):
        """{HF key: tensor}: `bert.*` and `classifier.*`, as transformers saves this model."""
        return dict(self.state_dict())


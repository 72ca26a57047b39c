"""Batched generation with a KV cache for the decoder LMs in models/ (GPT-2/AraGPT2, Qwen2/Qwen3, Llama, Gemma-3).

    from models.generate import generate
    new_tokens = generate(model, [[5, 17, 3], [9, 2]], max_new_tokens=64, eos_id=0, pad_id=0)

Prompts of different lengths are left-padded into one batch, so every row's next token sits in
the last column. Generation is a prefill (the whole padded prompt in one forward, filling the
cache) followed by one-token decode steps that read the cache (the layout of gpt-fast). With
`use_cache=False` every step recomputes the full context instead: the slow, obviously right
reference the cached path is tested against.

Token choice follows Hugging Face's `generate` semantics: repetition penalty (logits of tokens
already present, prompt or generated, divided by the penalty when positive and multiplied when
negative), no-repeat-ngram (a token that would complete an n-gram already in the row is banned),
then temperature, top-k and top-p (nucleus) filtering and a draw from a seeded torch.Generator;
temperature 0 means greedy. Unlike HF, padding tokens never count as "present" tokens. Ids >=
`vocab_limit` are never produced (Qwen2.5's embedding has 151936 rows but 151665 real tokens).
"""
import torch


class KVCache:
    """Per-layer key/value buffers [B, n_kv_heads, max_len, hs], allocated on the first write.

    A model's forward reads `cache.length` (tokens already stored) for its positions and masks,
    each attention layer calls `update(layer_idx, k, v)`, and the forward ends with `advance(T)`.
    """

    def __init__(self, n_layers, max_len):
        self.max_len = max_len
        self.length = 0
        self.k = [None] * n_layers
        self.v = [None] * n_layers

    def update(self, layer_idx, k, v):
        """Store k, v (B, nkv, T, hs) after the cached tokens; return all keys/values (B, nkv, length+T, hs)."""
        B, nkv, T, hs = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} were asked for")
        if self.k[layer_idx] is None:
            self.k[layer_idx] = k.new_zeros(B, nkv, self.max_len, hs)
            self.v[layer_idx] = v.new_zeros(B, nkv, self.max_len, hs)
        self.k[layer_idx][:, :, self.length:end] = k
        self.v[layer_idx][:, :, self.length:end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def advance(self, T):
        """Called once per forward, after every layer has stored its T new tokens."""
        self.length += T


class StaticKVCache:
    """A KV cache of fixed shape [B, nkv, max_len, hs] for a compiled decode step (--compile).

    Every decode step shows the model the same `length` (max_len - 1 cached tokens) and the new
    token's key/value in the last slot, so its shapes, masks and the compiled graph never change:
      roll=False  the prompt is stored from slot 0 and each new token in its own next slot, and
                  also in the last slot, where the model's mask puts the query (that step's mask
                  hides the own-slot copy); attention over all slots does not depend on their order
                  (positions are in the keys: RoPE or learned embeddings), so this equals KVCache;
      roll=True   (sliding-window layers: Gemma-3) the prompt is stored right-aligned and each step
                  shifts every slot left and writes the new token last, so slot distances stay
                  token distances and the window masks the same keys as with KVCache; the shift
                  costs a copy of the cache per layer and step.
    Slots not yet written are masked like left padding."""

    def __init__(self, n_layers, B, max_len, nkv, hs, dtype, device, roll):
        self.max_len, self.length, self.roll, self.slot = max_len, 0, roll, None
        self.k = [torch.zeros(B, nkv, max_len, hs, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(B, nkv, max_len, hs, dtype=dtype, device=device) for _ in range(n_layers)]

    def update(self, layer_idx, k, v):
        """Prefill (length 0): store, return k, v. Decode: store (see the class), return all slots."""
        K, V = self.k[layer_idx], self.v[layer_idx]
        T = k.shape[2]
        if self.length == 0:
            start = self.max_len - T if self.roll else 0
            K[:, :, start:start + T].copy_(k)
            V[:, :, start:start + T].copy_(v)
            return k, v
        if self.roll:
            K.copy_(torch.cat([K[:, :, T:], k], dim=2))  # (B, nkv, max_len, hs), newest last
            V.copy_(torch.cat([V[:, :, T:], v], dim=2))
            return K, V
        # its own slot (for the later steps) and the last slot (the query's in the model's mask), in one
        # index_copy_ that inductor does in place (a second, sliced copy_ made it copy the whole cache)
        K.index_copy_(2, self.slot, torch.cat([k, k], dim=2))
        V.index_copy_(2, self.slot, torch.cat([v, v], dim=2))
        return K, V

    def advance(self, T):
        self.length = self.max_len - 1  # what every decode step sees: max_len - 1 cached + 1 new


class Decoder:
    """The decode step on a StaticKVCache, eager or compiled (evaluate.py --compile): one graph per
    batch size, the cache length fixed for the whole run (max_len >= longest prompt + new tokens - 1).
    On CUDA, mode="reduce-overhead" replays the step as a CUDA graph (the caches are kept per batch
    size, at fixed addresses). Eager (compile=False) is the same arithmetic without torch.compile."""

    def __init__(self, model, max_len, compile=True):
        self.model, self.max_len, self.caches = model, max_len, {}
        device, cfg = next(model.parameters()).device, model.config
        n_positions = getattr(cfg, "n_positions", None)  # GPT-2 refuses a longer "past" than this
        self.roll = ("sliding_attention" in (getattr(cfg, "layer_types", None) or ())
                     or (n_positions is not None and max_len + 1 > n_positions))
        self.slots = max_len if self.roll else max_len + 1  # + the query's slot
        self.step = last_logits
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.step = torch.compile(last_logits, mode=mode, dynamic=False)

    def begin(self, prompts, L, mask, need):
        """A new batch (prompts left-padded to L columns, mask [B, >= L] or None, `need` slots): its
        reset cache, which the eager prefill fills; the static mask and the first new token's positions."""
        B, device = len(prompts), self.model.lm_head.weight.device
        self.live, self.L = self.cache(B, need), L
        self.smask = torch.zeros((B, self.slots), dtype=torch.long, device=device)
        prompt = slice(self.slots - L, None) if self.roll else slice(0, L)
        self.smask[:, prompt] = 1 if mask is None else mask[:, :L]
        self.smask[:, -1] = 1  # the query's own slot
        self.pos = torch.tensor([len(p) for p in prompts], device=device)[:, None]  # (B, 1)
        return self.live

    def next_logits(self, tok, done, step, may_shrink):
        """Logits [B', V] after feeding tok (B,), and the rows kept when the batch shrank (else None)."""
        keep = None
        shrunk = self.shrink(done, self.live) if may_shrink else None
        if shrunk is not None:
            self.live, keep = shrunk
            self.smask, self.pos, tok = self.smask[keep], self.pos[keep], tok[keep]
        if self.roll:
            self.smask = torch.cat([self.smask[:, 1:], self.smask.new_ones(len(tok), 1)], dim=1)  # shifts with the cache
        else:  # the token fed now is stored at slot L + step; the one fed before becomes visible
            if step > 0:
                self.smask[:, self.L + step - 1] = 1
            self.live.slot = torch.tensor([self.L + step, self.slots - 1], device=tok.device)
        return self.step(self.model, tok[:, None], self.smask, self.live, self.pos + step), keep

    @staticmethod
    def sizes(B):
        """The batch sizes a batch that started at B may shrink to: B and the powers of two below it."""
        return [B] + [1 << k for k in range(B.bit_length()) if (1 << k) < B]

    def shrink(self, done, cache):
        """When the unfinished rows fit a smaller fixed size: (that size's cache holding the kept
        rows, their indices) -- the unfinished rows plus finished ones to fill it, in order; else None."""
        B, alive = done.shape[0], int((~done).sum())
        target = min(s for s in self.sizes(B) if s >= alive)
        if target == B:
            return None
        keep = torch.argsort(done.int(), stable=True)[:target].sort().values  # unfinished rows first, in order
        small = self.cache(target, self.max_len)
        for layer in range(len(cache.k)):
            small.k[layer].copy_(cache.k[layer][keep])
            small.v[layer].copy_(cache.v[layer][keep])
        small.length = cache.length
        return small, keep

    def cache(self, B, need):
        """The static cache for batch size B (allocated once), reset for a new batch."""
        if need > self.max_len:
            raise ValueError(f"the compiled decoder holds {self.max_len} tokens; {need} were asked for")
        if B not in self.caches:
            cfg, ref = self.model.config, self.model.lm_head.weight
            nkv = getattr(cfg, "num_key_value_heads", None) or cfg.n_head
            hs = getattr(cfg, "head_dim", None) or (cfg.n_embd // cfg.n_head)
            self.caches[B] = StaticKVCache(n_layers_of(self.model), B, self.slots, nkv, hs, ref.dtype, ref.device,
                                           self.roll)
            if ref.device.type == "cuda":  # CUDA graphs need the cache at fixed addresses
                for t in self.caches[B].k + self.caches[B].v:
                    torch._dynamo.mark_static_address(t)
        cache = self.caches[B]
        cache.length = 0
        return cache


def left_padded(prompts, L, S, pad, device):
    """ids [B, S] with each prompt ending at column L (left padding: the last column is every row's
    newest token; room for every new token, so no cat per step), and the mask [B, S] and positions
    [B, S] built once per batch and sliced per step; without padding neither is needed (None)."""
    B = len(prompts)
    ids = torch.full((B, S), pad, dtype=torch.long, device=device)
    mask = torch.ones((B, S), dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):L] = torch.tensor(p, dtype=torch.long, device=device)
        mask[b, :L - len(p)] = 0
    if all(len(p) == L for p in prompts):
        return ids, None, None
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)  # left padding does not shift the positions


def n_layers_of(model):
    cfg = model.config
    return cfg.n_layer if hasattr(cfg, "n_layer") else cfg.num_hidden_layers


def last_logits(model, ids, mask, cache, positions=None):
    """fp32 logits [B, V] of the last column only: the lm_head never sees the other positions."""
    hidden = model(ids, attention_mask=mask, position_ids=positions, cache=cache, return_hidden=True)  # (B, T, C)
    return model.lm_head(hidden[:, -1]).float()  # (B, V)


def prefill(model, ids, mask, cache):
    """Run the whole (left-padded) prompt once; with a cache this stores its keys and values."""
    return last_logits(model, ids, mask, cache)


def decode_one(model, ids, mask, cache, positions=None):
    """Next-token logits: only the newest token when cached, else the whole context again.
    positions: the context's position ids [B, S] (built once per batch), or None (the model's own)."""
    if cache is not None:
        return last_logits(model, ids[:, -1:], mask, cache, None if positions is None else positions[:, -1:])
    return last_logits(model, ids, mask, None, positions)


def banned_ngram_tokens(seq, n):
    """Tokens that would complete an n-gram already present in seq (HF's no_repeat_ngram_size)."""
    if n <= 0 or len(seq) + 1 < n:
        return []
    prefix = tuple(seq[len(seq) - n + 1:])
    return [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]


def process_logits(logits, seen, rows, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                   vocab_limit):
    """Apply the HF logits processors in HF's order to logits [B, V] (fp32); returns new logits."""
    logits = logits.clone()
    if vocab_limit is not None:
        logits[:, vocab_limit:] = float("-inf")
    if repetition_penalty != 1.0:
        penalized = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if no_repeat_ngram_size > 0:
        for b, seq in enumerate(rows):
            banned = banned_ngram_tokens(seq, no_repeat_ngram_size)
            if banned:
                logits[b, banned] = float("-inf")
    if temperature <= 0:
        return logits  # greedy: the warpers below do not change the argmax
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # drop the least likely tokens whose total probability stays <= 1 - top_p; keep at least one
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits, temperature, generator):
    """Greedy argmax (temperature 0) or one draw from softmax(logits)."""
    if temperature <= 0:
        return logits.argmax(-1)  # (B,)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


@torch.inference_mode()
def generate(model, prompts, max_new_tokens, eos_id, pad_id, temperature=0.0, top_k=0, top_p=1.0,
             repetition_penalty=1.0, no_repeat_ngram_size=0, vocab_limit=None, seed=None, use_cache=True,
             decoder=None):
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens.

    Returns one list per prompt with the new tokens only, stopped at (and excluding) EOS. eos_id:
    an id, a list of ids, or None (never stop early). pad_id fills the left padding and the rows
    that already finished (None: eos or 0). The model runs in eval mode (its mode is restored).
    decoder: a Decoder (static cache, the step compiled or not), else the eager KVCache path.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    pad = pad_id if pad_id is not None else (min(eos) if eos else 0)
    B, L = len(prompts), max(len(p) for p in prompts)
    cfg = model.config  # GPT-2 names its context n_positions, Qwen2 / Llama max_position_embeddings
    n_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    # the model reads L + max_new_tokens - 1 positions: the last new token is never fed back
    if n_positions is not None and L + max_new_tokens - 1 > n_positions:
        raise ValueError(f"prompt ({L} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{n_positions} positions + 1")
    device = next(model.parameters()).device
    V = model.lm_head.weight.shape[0]

    S = L + max_new_tokens
    ids, mask, positions = left_padded(prompts, L, S, pad, device)
    padded = mask is not None
    ctx = lambda n: (ids[:, :n], mask[:, :n] if padded else None)  # noqa: E731  (context of n columns)
    rows = [list(p) for p in prompts] if no_repeat_ngram_size > 0 else None  # the n-gram ban reads host lists
    seen = None  # tokens present in each row, for the repetition penalty only
    if repetition_penalty != 1.0:
        seen = torch.zeros((B, V), dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            seen[b, torch.tensor(p, device=device)] = True
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    new = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)  # -1: the row had finished
    done = torch.zeros(B, dtype=torch.bool, device=device)
    arange_b = torch.arange(B, device=device)
    # the host learns the tokens at the end; it asks whether every row is done only every few steps
    # (on a CPU every step: nothing runs ahead there, so asking costs nothing and saves steps)
    check_every = 1 if device.type == "cpu" or rows is not None else 8

    was_training = model.training
    model.eval()
    try:
        if decoder is not None:  # static shapes: the step sees the whole cache, padded on the left
            cache = decoder.begin(prompts, L, mask, S - 1)
        else:
            cache = KVCache(n_layers_of(model), S) if use_cache else None
        logits = prefill(model, *ctx(L), cache)
        slot = torch.arange(B, device=device)  # the row of `new` each batch row writes (rows drop out: --compile)
        for step in range(max_new_tokens):
            logits = process_logits(logits, seen, rows, temperature, top_k, top_p, repetition_penalty,
                                    no_repeat_ngram_size, vocab_limit)
            tok = choose(logits, temperature, generator)  # (B,), stays on the device
            done = done | torch.isin(tok, eos_ids)
            got = tok.masked_fill(done, -1)
            new[slot, step] = got
            tok = tok.masked_fill(done, pad)  # finished rows are fed padding and never extended
            if seen is not None:
                seen[arange_b, tok] |= ~done
            if rows is not None:
                for b, t in enumerate(got.tolist()):
                    if t >= 0:
                        rows[b].append(t)
            if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and bool(done.all())):
                break
            if decoder is None:
                ids[:, L + step] = tok
                n = L + step + 1  # context columns
                logits = decode_one(model, *ctx(n), cache, None if positions is None else positions[:, :n])
                continue
            logits, keep = decoder.next_logits(tok, done, step, (step + 1) % check_every == 0)
            if keep is not None:  # finished rows left the batch (at a fixed size): their state goes too
                done, slot, arange_b = done[keep], slot[keep], torch.arange(len(keep), device=device)
                seen = seen[keep] if seen is not None else None
                rows = [rows[i] for i in keep.tolist()] if rows is not None else None
        out = [[t for t in row if t >= 0] for row in new.tolist()]  # -1 only after a row's EOS
    finally:
        model.train(was_training)
    return out

"""Memory savers for train_lm.py: activation checkpointing and FSDP2 sharding, each one call.

    checkpoint_blocks(model)                  # recompute each block's activations in backward
    root = shard_model(model, loss_fn, bf16)  # FSDP2 under torchrun: every block, then the root
    loss_sums = root(input_ids, labels, token_weights, ...)   # the weighted loss inside the forward

Activation checkpointing keeps only each block's input during the forward and recomputes the block
in the backward (torch.utils.checkpoint, non-reentrant; the RNG is replayed, so dropout masks and
gradients are the same as without it), trading ~1/3 more compute for activations of one block.

FSDP2 (`fully_shard`, the per-parameter sharding PyTorch maintains; torchtitan applies it the
same way) splits every parameter, its gradient and its AdamW state over the ranks: each rank holds
1/N of the model between uses, all-gathers a block's weights just before the block runs, and
reduce-scatters its gradients after the backward. It is data parallel like DDP (each rank its own
micro-batches), and reduce-scatter averages over ranks as DDP's all-reduce does, so train_lm's
`loss_sum / denom * world_size` is the same global token-count loss. On GPUs that support bf16 the
gathered weights are bf16 for compute while the sharded master weights, the optimizer and the
gradient reduction stay fp32. Checkpoints: `full_weights` gathers the whole fp32 model to rank 0,
which writes the ordinary Hugging Face folder; the optimizer state is gathered too
(`optimizer_state`, keyed by parameter name, in trainer_state.pt as without FSDP), and a resume
re-shards it (`load_optimizer_state`). Gathering costs host memory on rank 0 (weights + 2 AdamW
moments, 12 bytes per parameter) for the moment of the save.
"""
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # torch 2.4-2.5
    from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch 2.4
    from torch.distributed._tensor import DTensor, distribute_tensor


def blocks(model):
    """The model's transformer blocks: its first nn.ModuleList (GPT-2 transformer.h, Qwen2 model.layers)."""
    return next(m for m in model.modules() if isinstance(m, nn.ModuleList))


def checkpoint_blocks(model):
    """Make every block recompute its forward during the backward (in place; returns the model).
    The block's own forward is wrapped on the instance, so parameter names (and checkpoints) are unchanged."""
    for block in blocks(model):
        def forward(*args, _forward=block.forward, **kwargs):
            if not torch.is_grad_enabled():  # validation, generation: nothing to save memory on
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        block.forward = forward
    return model


class LossModel(nn.Module):
    """The model and the weighted loss in one forward. Under FSDP a module's weights are whole
    only inside its forward, and the fused loss needs the whole lm_head weight: so the loss is
    computed here, inside the root's forward, instead of after the model returns its hidden states."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, input_ids, labels, *token_weights):
        """Weighted loss sums, one per token-weight tensor (each shaped like labels): [K]."""
        hidden = self.model(input_ids, return_hidden=True).flatten(0, 1)  # (B*T, C)
        return torch.stack([self.loss_fn(hidden, self.model.lm_head.weight, labels.flatten(), w.flatten())
                            for w in token_weights])


def shard_model(model, loss_fn, bf16=False):
    """FSDP2 over all ranks: fully_shard each block, then the root (embeddings, final norm, lm_head)
    as a LossModel; returns the root. Needs a process group (torchrun); the model must already be
    on its device, with checkpoint_blocks applied first if wanted."""
    world = dist.get_world_size()
    device_type = next(model.parameters()).device.type
    mesh = torch.distributed.device_mesh.init_device_mesh(device_type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    root_mp = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype,
                                   cast_forward_inputs=False)  # the token weights stay fp32
    return fully_shard(LossModel(model, loss_fn), mesh=mesh, mp_policy=root_mp)


def plain(t):
    """A DTensor (a sharded value, e.g. FSDP's gradient norm) as an ordinary tensor; others unchanged."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def reshard(root):
    """Put every FSDP module of `root` back to its shards. FSDP2 leaves the root's own weights
    whole after a forward (they are needed again in the backward), and after a no-grad forward
    (validation) nothing reshards them: the parameters would then not be the sharded ones."""
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextmanager
def full_weights(model, rank, root=None):
    """Inside the block, on rank 0, `model`'s sharded parameters are replaced by whole fp32 copies
    on the CPU (tied weights stay tied), so it saves like an unsharded model; on exit the shards are
    put back. Every rank must enter (the gathers are collective); without DTensor parameters
    (no FSDP, root None) it changes nothing."""
    if root is not None:
        reshard(root)
    swapped, full = [], {}  # (module, name, original parameter); id(original) -> whole copy
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if not isinstance(p, DTensor):
                continue
            if id(p) not in full:
                whole = p.full_tensor().detach()  # all ranks take part
                full[id(p)] = nn.Parameter(whole.cpu(), requires_grad=False) if rank == 0 else None
            if rank == 0:
                swapped.append((module, name, p))
                setattr(module, name, full[id(p)])
    try:
        yield model
    finally:
        for module, name, p in swapped:
            setattr(module, name, p)


def optimizer_state(root, optimizer):
    """The optimizer's state dict; under FSDP (root given) gathered whole to the CPU and keyed by
    parameter name instead of position (so it does not depend on the rank count). Every rank must call it."""
    if root is None:
        return optimizer.state_dict()
    reshard(root)
    names = {id(p): n for n, p in root.named_parameters()}
    groups, state = [], {}
    for g in optimizer.param_groups:  # the same order on every rank: the gathers line up
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]})
        for p in g["params"]:
            if p in optimizer.state:
                state[names[id(p)]] = {k: plain(v).detach().cpu() for k, v in optimizer.state[p].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state(root, optimizer, state):
    """Inverse of optimizer_state: every rank passes the whole state and keeps its own shards."""
    if root is None:
        return optimizer.load_state_dict(state)
    params = dict(root.named_parameters())
    order = [n for g in state["param_groups"] for n in g["params"]]  # load_state_dict's positional layout
    index = {n: i for i, n in enumerate(order)}
    sharded = {}
    for n, st in state["state"].items():
        p = params[n]
        sharded[index[n]] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                             if isinstance(p, DTensor) and v.dim() > 0 else v for k, v in st.items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    optimizer.load_state_dict({"state": sharded, "param_groups": groups})

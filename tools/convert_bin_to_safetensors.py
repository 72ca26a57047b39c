"""One-time conversion of a PyTorch-pickle checkpoint to safetensors, the only format this
project loads.

    python tools/convert_bin_to_safetensors.py path/to/model_folder

Reads pytorch_model.bin (or the shards listed in pytorch_model.bin.index.json) with
torch.load(weights_only=True, map_location="cpu"), which refuses to run code hidden in the pickle,
and writes model.safetensors (or model-0000X-of-0000Y.safetensors shards plus
model.safetensors.index.json) next to it, with metadata {"format": "pt"} so transformers accepts
it too. Tensors that share storage (a tied lm_head) are saved as separate copies; the model's
loader drops the tied copy. The .bin files are left in place; delete them yourself once the folder
loads. Each output file is written to a temporary name and renamed, so an interrupted run leaves
no half-written file.
"""
import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.common import UsageError, naming_full_disk, run_main  # noqa: E402


def to_safetensors(bin_path, out_path):
    """Convert one .bin file; returns its keys."""
    try:
        sd = torch.load(bin_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{bin_path}: file not found (the index names it)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError):  # torch's own advice (weights_only=False) is not ours
        raise UsageError(f"{bin_path}: torch.load(weights_only=True) refused it: a damaged file, not a PyTorch "
                         "checkpoint, or a pickle that would run code (never loaded here)") from None
    if not isinstance(sd, dict):
        raise UsageError(f"{bin_path}: holds a {type(sd).__name__}, not a dict of tensors")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # a training checkpoint wrapping the weights
    tensors, seen = {}, set()
    for k, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"{bin_path}: entry {k!r} is a {type(t).__name__}, not a tensor")
        ptr = t.untyped_storage().data_ptr()
        t = t.contiguous()
        if ptr in seen:  # safetensors refuses tensors that share memory: save a copy
            t = t.clone()
        seen.add(ptr)
        tensors[k] = t
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with naming_full_disk(out_path):  # a full disk is one error line (run_main), naming the file
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed or full-disk write leaves no partial file
    print(f"{bin_path.name} -> {out_path.name} ({len(tensors)} tensors)")
    return list(tensors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="model folder holding pytorch_model.bin or pytorch_model.bin.index.json")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    single, index = folder / "pytorch_model.bin", folder / "pytorch_model.bin.index.json"
    done = [p.name for p in (folder / "model.safetensors", folder / "model.safetensors.index.json") if p.exists()]
    if done:  # never written over: the folder's safetensors are the user's
        parser.error(f"{folder} already holds {done[0]}: nothing to convert (it is left as it is)")
    if single.is_file():
        to_safetensors(single, folder / "model.safetensors")
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{index}: not a JSON index with a weight_map ({type(e).__name__}: {e})") from None
        renamed = {}
        for shard in sorted(set(weight_map.values())):
            out = shard.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors"
            to_safetensors(folder / shard, folder / out)
            renamed[shard] = out
        new_map = {k: renamed[shard] for k, shard in weight_map.items()}
        tmp = folder / ".model.safetensors.index.json.tmp"
        try:
            with naming_full_disk(folder / "model.safetensors.index.json"):
                tmp.write_text(json.dumps({"metadata": {}, "weight_map": new_map}, indent=2) + "\n", encoding="utf-8")
                os.replace(tmp, folder / "model.safetensors.index.json")
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote model.safetensors.index.json ({len(renamed)} shards)")
    else:
        parser.error(f"{folder}: no pytorch_model.bin or pytorch_model.bin.index.json")


if __name__ == "__main__":
    run_main(main)

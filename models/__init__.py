"""Pure-PyTorch GPT-2, Qwen2 and BERT that read and write Hugging Face model folders.

    from models import load_pretrained, save_pretrained
    model, tokenizer = load_pretrained("path/to/aragpt2-base")
"""
from models.hf_io import Tokenizer, build_model, load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained", "build_model", "Tokenizer"]

"""tools/convert_bin_to_safetensors.py on bad input and a full disk: one `error:` line, exit 1, and
nothing half-written left in the user's folder. (Its conversions themselves, single and sharded, are
checked against transformers in tests/test_hf_io.py.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.common import run_main  # noqa: E402
from tools import convert_bin_to_safetensors as converter  # noqa: E402


def convert(folder):
    return subprocess.run([sys.executable, "tools/convert_bin_to_safetensors.py", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def one_error_line(r):
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def error_in_process(folder):
    """The message run_main exits with (what the command prints as its one line), without a new process."""
    with pytest.raises(SystemExit) as e:
        run_main(lambda: converter.main([str(folder)]))
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


@pytest.mark.parametrize("case", ["garbage", "not_a_dict", "not_a_tensor", "bad_index", "index_names_a_missing_shard"])
def test_bad_checkpoints_are_one_line_and_leave_nothing(tmp_path, case):
    if case == "garbage":
        (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint\n")
        want = "refused it"
    elif case == "not_a_dict":
        torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
        want = "holds a list, not a dict of tensors"
    elif case == "not_a_tensor":
        torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "pytorch_model.bin")
        want = "entry 'step' is a int, not a tensor"
    elif case == "bad_index":
        (tmp_path / "pytorch_model.bin.index.json").write_text("[1")
        want = "not a JSON index with a weight_map"
    else:
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "shard.bin"}}))
        want = "shard.bin: file not found"
    before = sorted(p.name for p in tmp_path.iterdir())
    # one case as the command (a new process: its stderr is the one line), the others in this process
    assert want in (one_error_line(convert(tmp_path)) if case == "garbage" else error_in_process(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError
    torch.save({"w": torch.zeros(4, 4)}, tmp_path / "pytorch_model.bin")

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")  # what a write cut short leaves, before the error
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(converter, "save_file", full_disk)
    assert error_in_process(tmp_path).startswith(f"error: disk full ({tmp_path / 'model.safetensors'})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_model.bin"]

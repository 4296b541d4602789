"""docs/bench/loss_share.py: which targets lie inside a pre-training question, and the counts of a real config."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("loss_share", ROOT / "docs/bench/loss_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_shape_word_in_a_question_is_inside_and_one_in_an_answer_or_caption_is_not():
    from mm1lab.data.tokenizer import load_tokenizer

    bench, tok = _bench(), load_tokenizer()
    text = ("<image>Question: Is there a blue circle? Answer: no\n<image> a red square\n"
            "<image>Question: What shape is it? Answer: circle")
    ids = torch.tensor([tok.encode(text)])
    batch = dict(input_ids=ids, labels=ids.clone(), attention_mask=torch.ones_like(ids))
    markers = dict(question=tok.encode("Question")[0], answer=tok.encode(" Answer")[0], image=tok.image_id)
    targets, inside = bench.targets(batch, **markers)
    words = [tok.token(int(t)) for t in targets]
    flagged = {w for w, i in zip(words, inside.tolist()) if i}
    assert {"Ġblue", "Ġcircle", "Ġshape"} <= flagged                  # the two questions' words
    assert "Ġsquare" not in flagged and "Ġno" not in flagged          # a caption, an answer
    assert words[-1] == "Ġcircle" and not inside[-1]                  # the answer's shape word


def test_the_bench_counts_a_configs_own_batches(tmp_path):
    config = tmp_path / "pre.yaml"
    config.write_text("stage: pretrain\nmodel: tiny\nbatch_size: 4\ndata:\n  seq_len: 128\n")
    out = subprocess.run([sys.executable, str(ROOT / "docs/bench/loss_share.py"), str(config), "--steps", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line for line in out.stdout.splitlines() if line.startswith(f"| {config}")][0]
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[0] == "4" and float(cells[1]) > 0 and 0 <= float(cells[3]) < 1

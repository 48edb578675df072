"""The vision tower's CTC head (docs/default_model.md): frames per token, and splitting a trained head's frames."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from got.checkpoint import load_model, save_pretrained
from got.config import GOTConfig, VisionConfig, load_config
from got.modeling import GOTModel
from got.tokenizer import GOTTokenizer
from got.vision_tower import VisionTower

REPO = Path(__file__).resolve().parents[1]
LINE_TOWER = dict(image_size=[32, 256], patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, window_size=4,
                  global_attn_indexes=[1], neck_channels=16, net2_channels=32, out_channels=64, neck_stride=[2, 1],
                  ctc_charset="abl ")


def fit_head(frames: int, text: str, tokens: int = 2, steps: int = 150) -> tuple[str, float, float]:
    """Train only the CTC head of a `frames`-per-token tower to read `text` from fixed features of `tokens` tokens:
    (its reading, the first loss, the last loss)."""
    torch.manual_seed(0)
    tower = VisionTower(VisionConfig(**{**LINE_TOWER, "ctc_frames": frames}))
    features = torch.randn(1, tokens, 64)
    target = torch.tensor([[tower.config.ctc_charset.index(c) + 1 for c in text]])
    opt = torch.optim.Adam(tower.ctc_head.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        logp = tower.ctc_logits(features).log_softmax(-1).transpose(0, 1)
        loss = torch.nn.functional.ctc_loss(logp, target, torch.tensor([logp.shape[0]]), torch.tensor([len(text)]),
                                            zero_infinity=True)  # as the trainer: an impossible target adds nothing
        losses.append(float(torch.nn.functional.ctc_loss(logp.detach(), target, torch.tensor([logp.shape[0]]),
                                                         torch.tensor([len(text)]))))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tower.ctc_decode(features)[0][0], losses[0], losses[-1]


def test_two_frames_per_token_read_a_doubled_letter():
    """CTC puts a blank between doubled letters: "ll" needs 3 frames. Two 8 px tokens with one frame each cannot
    read it (the loss is infinite); with two frames each they can."""
    text, first, last = fit_head(1, "ll")
    assert first == last == float("inf") and text != "ll"
    text, first, last = fit_head(2, "ll")
    assert text == "ll" and last < 0.1 < first


def test_ctc_logits_have_frames_per_token():
    tower = VisionTower(VisionConfig(**{**LINE_TOWER, "ctc_frames": 3}))
    features = tower(torch.randn(2, 3, 32, 256))
    assert features.shape == (2, 32, 64)
    assert tower.ctc_logits(features).shape == (2, 96, 5)
    with pytest.raises(ValueError, match="ctc_frames must be at least 1"):
        VisionConfig(**{**LINE_TOWER, "ctc_frames": 0})


def test_split_ctc_frames_reads_as_before(tmp_path):
    """scripts/split_ctc_frames.py copies each token's scores into its new frames: the same text, the same
    confidence, before any training; the config says 2 frames and the model loads through the same code."""
    d = load_config("tiny").to_dict()
    d["vision"] = LINE_TOWER
    torch.manual_seed(0)
    model = GOTModel(GOTConfig.from_dict(d))
    with torch.no_grad():
        model.vision_tower.ctc_head.weight.normal_(0, 1.0)  # confident, varied reads
    save_pretrained(model, tmp_path / "one", tokenizer=GOTTokenizer.default())
    p = subprocess.run([sys.executable, "scripts/split_ctc_frames.py", str(tmp_path / "one"), str(tmp_path / "two")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    two = load_model(tmp_path / "two")
    assert two.config.vision.ctc_frames == 2
    pixels = torch.randn(4, 3, 32, 256)
    with torch.no_grad():
        before = model.vision_tower.ctc_decode(model.vision_tower(pixels))
        after = two.vision_tower.ctc_decode(two.vision_tower(pixels))
    assert [t for t, _ in after] == [t for t, _ in before] and any(t for t, _ in before)
    assert [c for _, c in after] == pytest.approx([c for _, c in before])
    again = subprocess.run([sys.executable, "scripts/split_ctc_frames.py", str(tmp_path / "two"), str(tmp_path / "x")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already has 2 frames" in again.stderr

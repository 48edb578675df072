"""`got demo`: the default model reads a real document page (a page of a Debian package's PDF manual, kept in
docs/samples) and prints its answer, the page's own text layer and the character error rate.

`got demo --preset tiny` (or `--checkpoint DIR`) instead walks through the pipeline on a rendered image: it builds
the model, runs one training forward and a greedy generate, and prints what happened at every step (shapes,
parameter counts, where the image tokens went): processor -> vision tower -> projector -> <imgpad> merge -> decoder.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

DEMO_TEXT = "GOT-OCR2.0 demo\nOCR-2.0: one model,\nmany kinds of text."
# A page of libtasn1's manual (Debian package libtasn1-doc) at 120 dpi, and its PDF text layer.
REAL_PAGE = Path(__file__).resolve().parent.parent / "docs" / "samples" / "real_page.png"


def render_text_image(text: str = DEMO_TEXT, size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Black text on white, the simplest thing an OCR model reads."""
    from data_engines.fonts import load_font

    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).multiline_text((24, 24), text, fill="black", font=load_font("sans", 44), spacing=18)
    return im


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, default=REAL_PAGE, help="the page to read (default: docs/samples/real_page.png)")
    p.add_argument("--truth", type=Path, help="its text (default: the .txt beside the image)")
    p.add_argument("--preset", default=None, help="walk through a preset (tiny, tiny_stage1, stage1, base) instead")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of random weights")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


def read_real_page(image: Path, truth: Path | None) -> int:
    from got.inference import GOT
    from got.metrics import cer

    truth = truth or image.with_suffix(".txt")
    for path in (image, truth):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (the demo page lives in the checkout's docs/samples)")
    t0 = time.perf_counter()
    model = GOT.from_pretrained()
    t1 = time.perf_counter()
    answer = model.chat(image)
    t2 = time.perf_counter()
    gt = truth.read_text(encoding="utf-8").strip()
    print(f"== the default model ({model.model.num_parameters():,} parameters, loaded in {t1 - t0:.1f} s) reads "
          f"{image.name} in {t2 - t1:.1f} s:\n")
    print(answer)
    print(f"\n== truth (the PDF's text layer):\n\n{gt}\n")
    print(f"== CER {cer(answer, gt):.3f} ({len(gt)} characters)")
    return 0


def cli_main(args: argparse.Namespace) -> int:
    from got.checkpoint import load_pretrained
    from got.config import load_config
    from got.modeling import GOTModel
    from got.processor import ImageProcessor
    from got.prompts import build_query, encode_conversation, encode_prompt
    from got.tokenizer import GOTTokenizer

    if args.preset is None and args.checkpoint is None:
        return read_real_page(args.image, args.truth)
    args.preset = args.preset or "tiny"
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.checkpoint:
        model, tok = load_pretrained(args.checkpoint)
        source = f"checkpoint {args.checkpoint}"
    else:
        model = GOTModel(load_config(args.preset)).eval()
        tok = GOTTokenizer.default()
        source = f"preset '{args.preset}', random weights"
    cfg = model.config
    if tok.vocab_size > cfg.vocab_size or tok.img_pad_id != cfg.img_pad_id:
        raise ValueError(f"preset '{cfg.name}' (vocab {cfg.vocab_size}) does not fit the bundled tokenizer "
                         f"(vocab {tok.vocab_size}); use tiny / tiny_stage1 or --checkpoint")
    v = cfg.vision
    print(f"== model: {source} ({time.perf_counter() - t0:.1f} s)")
    print(f"   vision tower  {model.num_parameters('vision_tower'):>12,} params  {v.image_size}px, patch {v.patch_size} "
          f"-> {v.grid_hw[0]}x{v.grid_hw[1]} grid, {v.depth} blocks (global at {list(v.global_attn_indexes)}, "
          f"window {v.window_size}), neck {v.neck_channels} -> net_2 {v.net2_channels} -> net_3 {v.out_channels}")
    print(f"   projector     {model.num_parameters('projector'):>12,} params  Linear({v.out_channels} -> "
          f"{model.projector.out_features})")
    print(f"   decoder       {model.num_parameters('decoder'):>12,} params  {type(model.decoder).__name__}, "
          f"{model.decoder.config.num_hidden_layers} layers, vocab {cfg.vocab_size}")
    print(f"   total         {model.num_parameters():>12,} unique params (tied embeddings counted once)")

    image = render_text_image()
    pixels = ImageProcessor(image_size=v.image_size).preprocess(image)[None]
    print(f"== image: {image.size[0]}x{image.size[1]} rendered text -> pixel_values {tuple(pixels.shape)} "
          f"(resized, CLIP-normalised: mean {pixels.mean():+.2f}, std {pixels.std():.2f})")

    query = build_query("plain")
    answer = DEMO_TEXT
    ids, labels = encode_conversation(tok, [{"from": "human", "value": f"<image>\n{query}"},
                                            {"from": "gpt", "value": answer}], cfg.image_token_len)
    ids_t, labels_t = torch.tensor([ids]), torch.tensor([labels])
    pad_pos = [i for i, t in enumerate(ids) if t == cfg.img_pad_id]
    supervised = sum(1 for lab in labels if lab != -100)
    print(f"== prompt: query {query!r}; {len(ids)} tokens = {len(pad_pos)} <imgpad> at positions "
          f"{pad_pos[0]}..{pad_pos[-1]} (between <img>@{ids.index(cfg.img_start_id)} and </img>@{ids.index(cfg.img_end_id)})"
          f" + {len(ids) - len(pad_pos)} text tokens; {supervised} supervised labels (answer + <|im_end|>)")

    t = time.perf_counter()
    with torch.no_grad():
        features = model.encode_images(pixels)
        embeds = model.merge_image_features(ids_t, model.decoder.get_input_embeddings()(ids_t), features)
        out = model(ids_t, pixels, labels=labels_t)
    moved = torch.equal(embeds[0, pad_pos], features[0])
    print(f"== forward ({time.perf_counter() - t:.2f} s): image features {tuple(features.shape)} placed on the "
          f"<imgpad> rows: {'yes' if moved else 'NO'}; logits {tuple(out.logits.shape)}, loss {out.loss.item():.3f} "
          f"(uniform guess would be ln {cfg.vocab_size} = {torch.log(torch.tensor(float(cfg.vocab_size))).item():.3f})")

    prompt = torch.tensor([encode_prompt(tok, query, cfg.image_token_len)])
    t = time.perf_counter()
    new = model.generate(prompt, pixels, max_new_tokens=args.max_new_tokens)
    dt = time.perf_counter() - t
    print(f"== generate ({dt:.2f} s, {new.shape[1]} new tokens, greedy, KV cache): ids {new[0].tolist()}")
    print(f"   text: {tok.decode(new[0].tolist())!r}")
    print(f"== done in {time.perf_counter() - t0:.1f} s")
    return 0

"""The OCR-1.0 peers `got eval` runs next to the model: Tesseract (its CLI) and PP-OCR (RapidOCR's ONNX models), each
reading what the model reads (each page, or the box region of a box query), with their detections put into reading
order by got.layout. A peer is any object with `.name` and `.read(samples, progress=None) -> [(text, seconds)]`.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

from PIL import Image

from got.layout import reading_order

if TYPE_CHECKING:
    from got.evaluate import EvalSample

PEERS = ("tesseract", "rapidocr")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]) +(?=[\u3400-\u9fff\uff00-\uffef\u3000-\u303f])")


def peer_images(s: EvalSample) -> list[Image.Image]:
    """What a peer reads for a record: each page, or the box region of a box query (0-1000 grid -> pixels)."""
    from got.processor import load_image

    images = [load_image(p) for p in s.images]
    if s.box is not None and len(s.box) == 4:
        w, h = images[0].size
        x1, y1, x2, y2 = s.box
        images = [images[0].crop((int(x1 / 1000 * w), int(y1 / 1000 * h), max(int(x1 / 1000 * w) + 1, round(x2 / 1000 * w)),
                                  max(int(y1 / 1000 * h) + 1, round(y2 / 1000 * h))))]
    return images


def _tidy(text: str) -> str:
    """Peer output as GOT writes text: no blank lines, no spaces between CJK characters, no trailing blanks."""
    lines = (_CJK_GAP.sub("", line).strip() for line in text.replace("\x0c", "").splitlines())
    return "\n".join(line for line in lines if line)


class Peer:
    name = "peer"

    def read_image(self, image: Image.Image) -> str:
        raise NotImplementedError

    def read_sample(self, s: EvalSample, progress=None) -> tuple[str, float]:
        t0 = time.perf_counter()
        text = "\n".join(self.read_image(im) for im in peer_images(s))
        if progress:
            progress(1)
        return _tidy(text), time.perf_counter() - t0

    def read(self, samples: Sequence[EvalSample], progress=None) -> list[tuple[str, float]]:
        return [self.read_sample(s, progress) for s in samples]


class TesseractPeer(Peer):
    """Tesseract 4/5 LSTM through the Debian `tesseract` command (no pytesseract): PNG on stdin, text on stdout.
    Automatic page segmentation (--psm 3), one OpenMP thread per process and one process per core."""

    name = "tesseract"

    def __init__(self, lang: str = "eng+chi_sim", psm: int = 3):
        exe = shutil.which("tesseract")
        if exe is None:
            raise FileNotFoundError("peer tesseract: the `tesseract` command is not installed; install the Debian "
                                    "packages tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim")
        have = subprocess.run([exe, "--list-langs"], capture_output=True, text=True).stdout.split()
        missing = [code for code in lang.split("+") if code not in have]
        if missing:
            pkgs = " ".join("tesseract-ocr-" + code.replace("_", "-") for code in missing)
            raise FileNotFoundError(f"peer tesseract: language data {', '.join(missing)} not installed; "
                                    f"install the Debian package(s) {pkgs}")
        self.cmd = [exe, "stdin", "stdout", "-l", lang, "--psm", str(psm)]
        self.env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        self.lang = lang

    def read_image(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        done = subprocess.run(self.cmd, input=buf.getvalue(), capture_output=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed: {done.stderr.decode(errors='replace').strip()[:200]}")
        return done.stdout.decode("utf-8", errors="replace")

    def read(self, samples: Sequence[EvalSample], progress=None) -> list[tuple[str, float]]:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # subprocesses: real parallelism
            return list(pool.map(lambda s: self.read_sample(s, progress), samples))


class RapidOCRPeer(Peer):
    """PP-OCR (PP-OCRv4 det + rec ONNX models shipped in the rapidocr_onnxruntime wheel), in reading order.

    Detection finds text boxes; `reading_order` arranges them (blocks top to bottom, columns left to right inside
    a block, lines top to bottom, column gaps split a line into segments) and each segment is recognized ONCE as a
    whole. Recognizing the detector's word pieces one by one (RapidOCR's own output) duplicates letters where
    pieces overlap and loses the spaces between them. Segments are read as cut, then again with a vertical margin
    of a quarter of their height: the margin restores the spaces the recognizer drops on short lines, but on long
    lines of small print it leaves the CTC head too few frames per character, which shows as lost characters, so
    the margin read is tried only where frames are to spare and kept only when it lost nothing. Settings: RapidOCR's defaults, except that
    detection upscales small images to a short side of 256 px rather than 736 (same accuracy on lines, ~8x
    faster) and no 180° classifier (it flips upright lines now and then; documents are upright).
    """

    name = "rapidocr"

    def __init__(self):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise ValueError("peer rapidocr: the Python package rapidocr_onnxruntime is not installed; "
                             "pip install rapidocr_onnxruntime (or pip install 'got-ocr[peers]')") from None
        self.engine = RapidOCR(det_limit_side_len=256, use_cls=False)

    def read_image(self, image: Image.Image) -> str:
        import numpy as np

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        boxes, _ = self.engine(bgr, use_cls=False, use_rec=False)
        if not boxes:
            return ""
        rects = [(b[:, 0].min(), b[:, 1].min(), b[:, 0].max(), b[:, 1].max()) for b in map(np.asarray, boxes)]
        lines = reading_order(rects)
        crops = [self._crop(bgr, seg) for line in lines for seg in line]
        texts = iter(self._recognize([c for c in crops if c is not None]))
        out = []
        for line in lines:
            words = [next(texts) if self._crop(bgr, seg) is not None else "" for seg in line]
            out.append(" ".join(w for w in words if w))
        return "\n".join(line for line in out if line)

    @staticmethod
    def _crop(bgr, seg: list[tuple[float, float, float, float]]):
        import numpy as np

        x0, y0 = max(0, int(min(r[0] for r in seg))), max(0, int(min(r[1] for r in seg)))
        x1, y1 = int(np.ceil(max(r[2] for r in seg))), int(np.ceil(max(r[3] for r in seg)))
        crop = bgr[y0:y1, x0:x1]
        return crop if crop.size else None

    def _recognize(self, crops: list) -> list[str]:
        """All segments in one batched call; then, where the CTC head would still get >= 1.5 frames (8 px of
        the 48-px-high input) per character, a second read with the vertical margin, kept if it lost nothing."""
        import numpy as np

        if not crops:
            return []
        reads = [tuple(r[:2]) for r in self.engine.text_rec(crops)[0]]
        retry, margins = [], []
        for i, (crop, (text, _)) in enumerate(zip(crops, reads)):
            h, w = crop.shape[:2]
            pad = max(1, h // 4)
            if 6 * w / (h + 2 * pad) >= 1.5 * len(text.replace(" ", "")):
                background = np.median(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]), axis=0)
                margin = np.empty((h + 2 * pad, w, 3), dtype=np.uint8)
                margin[:] = background.astype(np.uint8)
                margin[pad:pad + h] = crop
                retry.append(i)
                margins.append(margin)
        if margins:
            for i, r in zip(retry, self.engine.text_rec(margins)[0]):
                if len(r[0].replace(" ", "")) >= len(reads[i][0].replace(" ", "")):
                    reads[i] = tuple(r[:2])
        return [text.strip() if score >= self.engine.text_score else "" for text, score in reads]


def make_peer(name: str, tesseract_lang: str = "eng+chi_sim") -> Peer:
    if name == "tesseract":
        return TesseractPeer(lang=tesseract_lang)
    if name == "rapidocr":
        return RapidOCRPeer()
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")


# -------------------------------------------------------------------------------------------------- evaluation

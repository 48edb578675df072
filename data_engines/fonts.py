"""Fonts from Debian packages, found by file path so rendering never depends on fontconfig state."""
from __future__ import annotations

import functools
from pathlib import Path

from PIL import ImageFont

# family -> (Debian package, candidate files). Noto CJK .ttc collections open on their Simplified-Chinese face.
FONTS: dict[str, tuple[str, list[str]]] = {
    "sans": ("fonts-dejavu-core", ["truetype/dejavu/DejaVuSans.ttf"]),
    "sans-bold": ("fonts-dejavu-core", ["truetype/dejavu/DejaVuSans-Bold.ttf"]),
    "serif": ("fonts-dejavu-core", ["truetype/dejavu/DejaVuSerif.ttf"]),
    "serif-bold": ("fonts-dejavu-core", ["truetype/dejavu/DejaVuSerif-Bold.ttf"]),
    "mono": ("fonts-dejavu-core", ["truetype/dejavu/DejaVuSansMono.ttf"]),
    "liberation-sans": ("fonts-liberation", ["truetype/liberation/LiberationSans-Regular.ttf"]),
    "liberation-serif": ("fonts-liberation", ["truetype/liberation/LiberationSerif-Regular.ttf"]),
    "liberation-mono": ("fonts-liberation", ["truetype/liberation/LiberationMono-Regular.ttf"]),
    # URW base 35: the metric twins of Times, Helvetica, Courier & co. that most PDFs are set in.
    "nimbus-roman": ("fonts-urw-base35", ["opentype/urw-base35/NimbusRoman-Regular.otf"]),
    "nimbus-roman-italic": ("fonts-urw-base35", ["opentype/urw-base35/NimbusRoman-Italic.otf"]),
    "nimbus-roman-bold": ("fonts-urw-base35", ["opentype/urw-base35/NimbusRoman-Bold.otf"]),
    "nimbus-sans": ("fonts-urw-base35", ["opentype/urw-base35/NimbusSans-Regular.otf"]),
    "nimbus-sans-bold": ("fonts-urw-base35", ["opentype/urw-base35/NimbusSans-Bold.otf"]),
    "nimbus-mono": ("fonts-urw-base35", ["opentype/urw-base35/NimbusMonoPS-Regular.otf"]),
    "nimbus-mono-bold": ("fonts-urw-base35", ["opentype/urw-base35/NimbusMonoPS-Bold.otf"]),
    "urw-gothic": ("fonts-urw-base35", ["opentype/urw-base35/URWGothic-Book.otf"]),
    # Latin Modern (TeX's Computer Modern): what LaTeX and Texinfo manuals are set in.
    "lm-roman": ("fonts-lmodern", ["texmf/fonts/opentype/public/lm/lmroman10-regular.otf"]),
    "lm-roman-bold": ("fonts-lmodern", ["texmf/fonts/opentype/public/lm/lmroman10-bold.otf"]),
    "lm-roman-italic": ("fonts-lmodern", ["texmf/fonts/opentype/public/lm/lmroman10-italic.otf"]),
    "lm-sans": ("fonts-lmodern", ["texmf/fonts/opentype/public/lm/lmsans10-regular.otf"]),
    "lm-mono": ("fonts-lmodern", ["texmf/fonts/opentype/public/lm/lmmono10-regular.otf"]),
    # Held out of every training mix: the unseen fonts of the held-out evaluation sets (docs/default_model.md).
    "c059": ("fonts-urw-base35", ["opentype/urw-base35/C059-Roman.otf"]),
    "p052": ("fonts-urw-base35", ["opentype/urw-base35/P052-Roman.otf"]),
    "urw-bookman": ("fonts-urw-base35", ["opentype/urw-base35/URWBookman-Light.otf"]),
    "cjk-sans": ("fonts-noto-cjk", ["opentype/noto/NotoSansCJK-Regular.ttc"]),
    "cjk-serif": ("fonts-noto-cjk", ["opentype/noto/NotoSerifCJK-Regular.ttc"]),
}
LATIN_FAMILIES = ["sans", "serif", "mono", "liberation-sans", "liberation-serif", "liberation-mono", "nimbus-roman",
                  "nimbus-roman-italic", "nimbus-sans", "nimbus-mono", "urw-gothic", "lm-roman", "lm-roman-italic",
                  "lm-sans", "lm-mono"]
HELD_OUT_FAMILIES = ["c059", "p052", "urw-bookman"]
CJK_FAMILIES = ["cjk-sans", "cjk-serif"]
FONT_ROOTS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/usr/share")]


@functools.lru_cache(maxsize=None)
def font_path(family: str) -> str:
    """Path of a font file; a missing font names the Debian package that provides it."""
    if family not in FONTS:
        raise ValueError(f"unknown font family {family!r}; choose from {', '.join(FONTS)}")
    package, candidates = FONTS[family]
    for root in FONT_ROOTS:
        for rel in candidates:
            if (root / rel).is_file():
                return str(root / rel)
    raise FileNotFoundError(f"font {family!r} not found under {FONT_ROOTS[0]}: install the Debian package {package} "
                            f"(apt-get install {package})")


@functools.lru_cache(maxsize=None)
def face_index(path: str) -> int:
    """Face of a .ttc to open: the Simplified-Chinese one for Noto CJK (face 0 there is Japanese)."""
    if not path.endswith(".ttc"):
        return 0
    for i in range(10):
        try:
            name = ImageFont.truetype(path, 12, index=i).getname()[0]
        except OSError:
            break
        if name.endswith(" SC"):
            return i
    return 0


@functools.lru_cache(maxsize=256)
def load_font(family: str, size: int) -> ImageFont.FreeTypeFont:
    """PIL font at `size` px (cached: loading a CJK .ttc costs ~20 ms)."""
    path = font_path(family)
    return ImageFont.truetype(path, size=size, index=face_index(path))

"""Build the real-document evaluation set: pages of text-layer PDFs that Debian packages ship, rasterised at
120 dpi, the truth being each page's own text layer. Nothing is downloaded: the PDFs come from installed packages
(scripts/setup.sh installs libtasn1-doc, glpk-doc and gnuplot-doc; others are used when present).

    python benchmarks/real_docs.py --out eval/real_docs          # -> eval/real_docs/data.json + page PNGs
    got eval --model default --data eval/real_docs/data.json --peer tesseract --peer rapidocr

Pages are chosen, not sampled: every page with at least 400 characters of mostly ASCII text, spread evenly over each
document (`--per-doc` of them), so the set is the same on every machine that has the same package versions.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import unicodedata
from pathlib import Path

import pymupdf

# (Debian package, PDF path): the first three are installed by scripts/setup.sh.
DOCUMENTS = [
    ("libtasn1-doc", "/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/glpk.pdf"),
    ("gnuplot-doc", "/usr/share/doc/gnuplot/gnuplot.pdf"),
    ("shared-mime-info", "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    ("bzip2", "/usr/share/doc/bzip2/manual.pdf.gz"),
]


def open_document(path: str) -> pymupdf.Document:
    data = Path(path).read_bytes()
    return pymupdf.open(stream=gzip.decompress(data) if path.endswith(".gz") else data, filetype="pdf")


def page_text(page: pymupdf.Page) -> str:
    """The text layer in the PDF's own order, one line per text line, blank lines and trailing spaces dropped;
    NFKC, so typeset ligatures (U+FB01 'fi') count as the letters they are."""
    text = unicodedata.normalize("NFKC", page.get_text("text"))
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def usable(text: str) -> bool:
    return len(text) >= 400 and sum(c.isascii() for c in text) >= 0.98 * len(text)


def build(out: Path, per_doc: int, dpi: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for package, path in DOCUMENTS:
        if not Path(path).is_file():
            print(f"real_docs: {package} not installed ({path}); skipped")
            continue
        doc = open_document(path)
        good = [i for i in range(doc.page_count) if usable(page_text(doc[i]))]
        step = max(1, len(good) // per_doc)
        for i in good[::step][:per_doc]:
            name = f"{Path(path).name.split('.')[0]}_p{i + 1:03d}.png"
            doc[i].get_pixmap(dpi=dpi).save(out / name)
            records.append({"image": name, "conversations": [{"from": "human", "value": "<image>\nOCR: "},
                                                              {"from": "gpt", "value": page_text(doc[i])}],
                            "source": {"package": package, "pdf": path, "page": i + 1, "dpi": dpi}})
        print(f"real_docs: {package}: {min(per_doc, len(good[::step]))} of {len(good)} usable pages")
    packages = {r["source"]["package"] for r in records}
    if len(packages) < 3:
        raise SystemExit(f"real_docs: only {len(packages)} documentation packages found; run scripts/setup.sh")
    (out / "data.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"real_docs: {len(records)} pages from {len(packages)} packages -> {out / 'data.json'}")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="eval/real_docs")
    ap.add_argument("--per-doc", type=int, default=10)
    ap.add_argument("--dpi", type=int, default=120)
    a = ap.parse_args()
    build(Path(a.out), a.per_doc, a.dpi)


if __name__ == "__main__":
    main()

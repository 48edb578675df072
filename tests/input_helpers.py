"""Bad documents shared by the inference and bad-input tests."""
from pathlib import Path

import pymupdf


def write_bad_pdfs(d: Path) -> None:
    """d/locked.pdf (AES-256, a user password) and d/empty.pdf (a valid PDF with no pages)."""
    doc = pymupdf.open()
    doc.new_page(width=100, height=100)
    doc.save(d / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    (d / "empty.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
                                  b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")

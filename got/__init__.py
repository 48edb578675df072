"""GOT-OCR2.0-style OCR: vision tower -> projector -> decoder."""
__version__ = "0.1.0"

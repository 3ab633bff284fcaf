"""Implementations behind the chapters of the book (one module per chapter, a few shared modules)."""

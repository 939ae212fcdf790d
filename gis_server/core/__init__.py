"""Framework-free functions: plain values in, plain values out (usable from CLI and notebooks)."""

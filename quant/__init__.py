"""Quantization recipes (PTQ/QAT) per backend; installed as ``hrvit_mobile.quant``."""

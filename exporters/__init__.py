"""Exporters for ExecuTorch, Core ML and LiteRT; installed as ``hrvit_mobile.exporters``."""

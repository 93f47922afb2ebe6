"""Patches of other libraries' internals, quarantined: each module swaps internals of one library's
pipeline for checked equivalents while an export runs (same artifacts, less time).

All of them go through :func:`hrvit_mobile.patching.library_patch`, which applies them only with
patches on and on the library versions they were written against (``patching.WRITTEN_FOR``);
``HRVIT_MOBILE_PATCHES=0`` runs stock library code only. An export's sidecar lists the patches it
applied under ``details.patches``.
"""

"""Parity on the ARM64 kernels phones run: ``hrvit-mobile verify ARTIFACT... --arch arm64``.

:mod:`.verify` prepares inputs and references on the host and compares (``verify_arm64``);
:mod:`.worker` runs the artifacts in the ARM64 process (natively, or under qemu user-mode emulation);
:mod:`.sysroot` builds and caches the arm64 sysroot that emulation runs in
(``python -m hrvit_mobile.arm64.sysroot`` prepares it ahead of time).
"""

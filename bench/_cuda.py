"""The GPU gate of ``bench/device_check.sh``: in its real mode a section runs on CUDA or fails loudly.

    python -m bench._cuda SECTION [ARGS...]            the benchmark ``bench/SECTION.py`` behind the gate
    python -m bench._cuda --dry-run SECTION [ARGS...]  the same benchmark on the CPU (the script's --dry-run)

Before the benchmark imports anything else, the devices it measures must be there: torch must see a CUDA
device, and for the sections that run GPU4PySCF (``dft``, ``fused``) CuPy and gpu4pyscf must be usable
(``dft.backend.gpu_usable``). Otherwise one line ``SECTION: FAILED at start: ...`` and exit status 3, in
about an interpreter's start-up, with nothing measured. After a benchmark that uses torch on the GPU, torch
must have allocated GPU memory (``torch.cuda.max_memory_allocated() > 0``): a benchmark that quietly fell
back to the CPU fails with one line too. The benchmark's own exit status is kept otherwise.
"""
from __future__ import annotations

import importlib.util
import sys

START_FAILED = 3  # exit status of a section that found no device to measure
NEEDS = {"dft": ("gpu4pyscf",), "fused": ("torch", "gpu4pyscf")}  # every other section: ("torch",)


def needs(section: str) -> tuple[str, ...]:
    """What ``section`` measures: ``torch`` (torch on a CUDA device) and/or ``gpu4pyscf`` (CuPy + GPU4PySCF)."""
    return NEEDS.get(section, ("torch",))


def missing(section: str) -> str | None:
    """Why ``section`` cannot run on the GPU here, in words; None when it can."""
    if "torch" in needs(section):
        import torch
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            return f"torch sees no CUDA device (torch {torch.__version__}, {build})"
    if "gpu4pyscf" in needs(section):
        from edg.dft.backend import gpu_usable
        if not gpu_usable():
            absent = [m for m in ("cupy", "gpu4pyscf") if importlib.util.find_spec(m) is None]
            why = f"{' and '.join(absent)} not installed" if absent else "CuPy sees no CUDA device"
            return f"GPU4PySCF is not usable ({why})"
    return None


def used_no_gpu(section: str) -> str | None:
    """After the benchmark: why its torch work did not run on the GPU, in words; None when it did (or when
    the section does not use torch)."""
    if "torch" not in needs(section):
        return None
    import torch
    if torch.cuda.is_initialized() and torch.cuda.max_memory_allocated() > 0:
        return None
    return "the benchmark finished without allocating any GPU memory through torch (it ran on the CPU)"


def main(argv: list[str]) -> int:
    dry = argv[:1] == ["--dry-run"]
    if dry:
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        print("usage: python -m bench._cuda [--dry-run] SECTION [ARGS...]", flush=True)
        return 2
    section, args = argv[0], argv[1:]
    if dry:
        print(f"{section}: dry run on the CPU (the GPU gate is off)", flush=True)
    elif (why := missing(section)) is not None:
        print(f"{section}: FAILED at start: {why}; this section measures the GPU and is not run without one",
              flush=True)
        return START_FAILED
    from bench.__main__ import main as bench_main
    rc = bench_main([section, *args])
    if not dry and rc == 0 and (why := used_no_gpu(section)) is not None:
        print(f"{section}: FAILED: {why}", flush=True)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

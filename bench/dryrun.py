"""A dry run of the DFT stage at scale: the real driver (``cluster.stages.run_dft``) and storage (result files,
failure manifest, progress file, resume scan) over synthetic molecules, with a stand-in worker that sleeps a
few milliseconds instead of running DFT and writes a small result file (scalars only, no ED/ESP).
Measures per-item costs and scales them to the paper's 2 M molecules:

* driver memory (RSS growth) and CPU time per item, in-process and with Ray actors;
* the resume scan (``done_keys``) with N results present, and a rerun that skips everything;
* files per folder of the result layout (``dft.worker.result_rel``), manifest and progress file sizes;
* ``Mirror.pull`` of a ``local://`` URL out (the object-store code path) with N results present;
* the render stage's resume scan (``shard_keys``) over shards of real-size samples, from the shards' key
  indexes and (indexes removed, as for shards of older runs) from every tar header.

    python -m bench dryrun                 # 20 000 molecules in-process, 2 000 on 2 Ray actors
    python -m bench dryrun --quick         # 2 000 / 300
    python -m bench dryrun --n=100000 --ray-n=5000 --ms=2
    python -m bench dryrun --only=pull,shards --pull-n=20000 --shard-n=5000   # the two resume costs alone
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from edg.dft.worker import DFTWorker
from edg.edg_core.molecule import Molecule

SCALE = (1_000_000, 2_000_000)
FAIL_EVERY = 100  # one molecule in 100 fails (a realistic failure manifest: SCF not converged)


class StandInWorker(DFTWorker):
    """``DFTWorker`` whose ``compute`` sleeps ``EDG_DRYRUN_MS`` ms (default 2) and returns the scalars of a DFT
    result (no SCF, no fields); every ``FAIL_EVERY``-th molecule (by key hash) raises, as an SCF failure would."""

    def compute(self, mol: Molecule):
        from edg.dft.result import DFTResult
        from edg.dft.worker import SCFNotConverged
        time.sleep(float(os.environ.get("EDG_DRYRUN_MS", "2")) / 1000)
        if int(hashlib.sha1(mol.id.encode()).hexdigest()[:8], 16) % FAIL_EVERY == 0:
            raise SCFNotConverged("stand-in failure (dry run)")
        e = -40.0 - 0.01 * len(mol.z)
        return DFTResult(id=mol.id, energies={f"E{i}": e / i for i in range(1, 7)}, homo=-0.3, lumo=0.05,
                         dipole=np.zeros(3), converged=True, wall_s=0.0, z=mol.z, pos=mol.pos,
                         method="stand-in (dry run)")


def synthetic(n: int, seed: int = 0):
    """``n`` QM9-sized molecules (9 heavy atoms + 9 H, random positions in a 6 Å box), made lazily."""
    rng = np.random.default_rng(seed)
    z = np.array([6] * 7 + [7, 8] + [1] * 9)
    for i in range(n):
        yield Molecule(z=z, pos=rng.uniform(-3, 3, (len(z), 3)), id=f"syn:{i}")


@contextmanager
def stand_in():
    """``run_dft`` takes its worker class from ``dft.worker``: swap in the stand-in for the block."""
    import edg.dft.worker as w
    real = w.DFTWorker
    w.DFTWorker = StandInWorker
    try:
        yield
    finally:
        w.DFTWorker = real


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run(n: int, out, workers) -> dict:
    from edg.cluster.stages import run_dft
    from edg.dft.config import DFTConfig
    rss0, cpu0, t0 = _rss_mb(), _cpu_s(), time.perf_counter()
    with stand_in():
        s = run_dft(synthetic(n), out, DFTConfig(backend="cpu", fields=False), workers, total=n)
    wall, cpu, rss1 = time.perf_counter() - t0, _cpu_s() - cpu0, _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"summary": s, "wall_s": wall, "cpu_s": cpu, "rss_growth_mb": rss1 - rss0, "peak_mb": peak}


def _files_per_folder(fields: Path) -> tuple[int, int, int]:
    counts = [len(os.listdir(d)) for d in fields.iterdir() if d.is_dir()]
    return len(counts), min(counts), max(counts)


def _scale(per_item: float, unit: str, fmt: str = "{:.1f}") -> str:
    return ", ".join(f"{fmt.format(per_item * m)} {unit} at {m // 1000:,}k" for m in SCALE)


def in_process(n: int, ms: float, root: Path) -> None:
    from edg.cluster.stages import Workers
    from edg.dft.worker import done_keys, result_files
    from edg.edg_core.io import read_jsonl
    out = root / "dft"
    _run(min(300, n), root / "warm-up", Workers(actors=0))  # imports and first-call costs stay out of the slope
    r = _run(n, out, Workers(actors=0))
    s = r["summary"]
    print(f"dryrun in-process: {n} molecules ({ms:g} ms stand-in each): done {s.done}, failed {s.failed} "
          f"in {r['wall_s']:.1f} s = {1e3 * r['wall_s'] / n:.2f} ms/item wall "
          f"({1e3 * (r['wall_s'] / n - ms / 1000):.2f} ms/item beyond the stand-in's sleep), "
          f"{1e3 * r['cpu_s'] / n:.2f} ms/item CPU (driver + writing the result file)")
    print(f"dryrun in-process: driver RSS growth {r['rss_growth_mb']:.1f} MB over {n} items "
          f"= {1e3 * r['rss_growth_mb'] / n:.2f} kB/item (peak RSS {r['peak_mb']:.0f} MB) -> "
          f"{_scale(r['rss_growth_mb'] / n / 1024, 'GB', '{:.2f}')}")
    t = time.perf_counter()
    listed = result_files(out)
    list_s = time.perf_counter() - t
    t = time.perf_counter()
    keys = done_keys(out)
    scan = time.perf_counter() - t
    print(f"dryrun resume scan: listing {len(listed)} result files {list_s:.2f} s = "
          f"{1e6 * list_s / len(listed):.1f} us/file -> {_scale(list_s / len(listed), 's')}; done_keys also reads "
          f"the end of each file to check it is a whole .npz")
    t = time.perf_counter()
    failed = {e["key"] for e in read_jsonl(out / "failures.jsonl")}
    fscan = time.perf_counter() - t
    key_bytes = _set_bytes(keys)
    print(f"dryrun resume scan: done_keys {len(keys)} results in {scan:.2f} s = {1e6 * scan / len(keys):.1f} us/result "
          f"-> {_scale(scan / len(keys), 's')}; the key set {key_bytes / 2**20:.1f} MB "
          f"-> {_scale(key_bytes / len(keys) / 2**20, 'MB', '{:.0f}')}")
    print(f"dryrun resume scan: failures.jsonl read, {len(failed)} keys in {1e3 * fscan:.1f} ms")
    rerun = _run(n, out, Workers(actors=0))
    print(f"dryrun rerun (everything finished or failed): {rerun['wall_s']:.1f} s = "
          f"{1e6 * rerun['wall_s'] / n:.0f} us/item -> {_scale(rerun['wall_s'] / n, 's')}")
    fields = out / "fields"
    folders, lo, hi = _files_per_folder(fields)
    sizes = [os.path.getsize(p) for p in result_files(out)[:2000]]
    print(f"dryrun layout: {folders} prefix folders, {lo}-{hi} files each "
          f"({len(os.listdir(fields)) - folders} files at the top); at 2,000k: ~{2_000_000 // 256:,} per folder; "
          f"result file (scalars only) {np.mean(sizes):.0f} B")
    man = out / "failures.jsonl"
    nfail = sum(1 for _ in open(man))
    per = man.stat().st_size / max(nfail, 1)
    prog = (out / "progress.json").stat().st_size
    print(f"dryrun manifests: failures.jsonl {man.stat().st_size / 1024:.0f} kB for {nfail} failures "
          f"({per:.0f} B each; at 1% of 2,000k: {per * 20_000 / 2**20:.1f} MB); progress.json {prog} B")


def _set_bytes(keys: set[str]) -> int:
    import sys
    return sys.getsizeof(keys) + sum(sys.getsizeof(k) for k in keys)


def remote_pull(n: int, root: Path, repeat: int = 5) -> None:
    """The object-store code path: results under a ``local://`` URL; how long a driver's Mirror.pull takes
    (a fresh temporary working copy each time, as a stage driver makes; the median of ``repeat`` pulls)."""
    from edg.cluster.stages import Workers
    from edg.edg_core.storage import Mirror
    url = f"local://{root / 'dft_url'}"
    r = _run(n, url, Workers(actors=0))
    print(f"dryrun local:// URL out: {n} molecules in {r['wall_s']:.1f} s = {1e3 * r['wall_s'] / n:.2f} ms/item "
          f"(each result uploaded whole; failures.jsonl uploaded at most every 30 s and at the end)")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        m = Mirror(url, exclude=("fields/*", "cubes/*"), temporary=True)
        fetched = m.pull()
        m.close()
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    print(f"dryrun Mirror.pull of the stage folder with {n} results present: {1e3 * dt:.1f} ms (median of {repeat}; "
          f"{fetched} files fetched) = {1e6 * dt / n:.2f} us/result; fields/ is never listed, so this does not grow "
          f"with the number of results (compare two --pull-n)")


def shard_scan(n: int, root: Path, image_kib: int = 132, repeat: int = 3) -> None:
    """The render stage's resume scan (``shard_keys``) over ``n`` samples of the size of a real one (ED +
    structure images, ``image_kib`` KiB, u8z), 1000 per shard: from the key indexes the writer leaves beside
    the shards, then with the indexes removed (shards of older runs: every tar header is read). Medians of
    ``repeat`` scans, page cache warm."""
    from edg.edg_core.shards import KEY_INDEX_SUFFIX, ShardWriter, encode_sample, shard_keys
    out = root / "shards"
    rng = np.random.default_rng(0)
    blob = {"edimg.u8z": rng.integers(0, 255, image_kib * 1024, dtype=np.uint8).tobytes()}
    t = time.perf_counter()
    with ShardWriter(out, "render", maxcount=1000) as w:
        for mol in synthetic(n):
            w.write({**encode_sample(mol), **blob})
    write_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in out.glob("*.tar"))
    shards = sorted(out.glob("*.tar"))
    indexes = sorted(out.glob(f"*{KEY_INDEX_SUFFIX}"))
    index_b = sum(f.stat().st_size for f in indexes)
    print(f"dryrun shards: {n} samples of {size / n / 1024:.0f} KiB in {len(shards)} shards written in "
          f"{write_s:.1f} s, with {len(indexes)} key indexes of {index_b / max(len(indexes), 1) / 1024:.1f} KiB")

    def scan() -> tuple[float, set]:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            keys = shard_keys(out)
            times.append(time.perf_counter() - t)
        return statistics.median(times), keys
    dt, keys = scan()
    print(f"dryrun resume scan (shard_keys, key indexes): {dt:.3f} s = {1e6 * dt / len(keys):.1f} us/sample -> "
          f"{_scale(dt / len(keys), 's', '{:.2f}')} on a local disk (an object store: one small read per shard)")
    for f in indexes:
        f.unlink()
    dt_tar, keys_tar = scan()
    assert keys_tar == keys
    print(f"dryrun resume scan (shard_keys, no indexes: every tar header): {dt_tar:.2f} s = "
          f"{1e6 * dt_tar / len(keys):.0f} us/sample -> {_scale(dt_tar / len(keys), 's')} on a local disk (an "
          f"object store reads each header by a range request); the index is {dt_tar / dt:.0f}x faster")
    shutil.rmtree(out, ignore_errors=True)


def on_ray(n: int, actors: int) -> None:
    from edg.cluster.runtime import ray_session
    from edg.cluster.stages import Workers
    from ray import cloudpickle

    import bench.dryrun as me
    cloudpickle.register_pickle_by_value(me)  # the actors need not import the bench package
    tmp = Path(tempfile.mkdtemp(prefix="edgdry"))
    try:
        with ray_session("local", num_cpus=actors):  # loopback only, like every local runtime EDG starts
            _run(min(100, n), tmp / "warm-up", Workers(actors=actors, cpus=1))
            r = _run(n, tmp / "dft", Workers(actors=actors, cpus=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = r["summary"]
    print(f"dryrun ray ({actors} actors): {n} molecules: done {s.done}, failed {s.failed} in "
          f"{r['wall_s']:.1f} s = {1e3 * r['wall_s'] / n:.2f} ms/item wall, driver CPU {1e3 * r['cpu_s'] / n:.2f} "
          f"ms/item -> {_scale(r['cpu_s'] / n / 3600, 'driver CPU-hours', '{:.2f}')}; driver RSS growth "
          f"{r['rss_growth_mb']:.1f} MB = {1e3 * r['rss_growth_mb'] / n:.2f} kB/item")


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    opts = {"n": 2000 if quick else 20000, "ray-n": 300 if quick else 2000, "ms": 2.0, "actors": 2,
            "pull-n": 0, "shard-n": 0, "only": "in-process,pull,shards,ray"}
    for a in argv:
        for k in opts:
            if a.startswith(f"--{k}="):
                opts[k] = type(opts[k])(a.split("=", 1)[1])
    parts = set(opts["only"].split(","))
    if parts - {"in-process", "pull", "shards", "ray"}:
        raise SystemExit(f"--only: choose among in-process, pull, shards, ray (got {opts['only']!r})")
    os.environ["EDG_DRYRUN_MS"] = str(opts["ms"])
    root = Path(tempfile.mkdtemp(prefix="edgdryrun"))
    try:
        if "in-process" in parts:
            in_process(opts["n"], opts["ms"], root)
        if "pull" in parts:
            remote_pull(opts["pull-n"] or min(opts["n"], 5000), root)
        if "shards" in parts:
            shard_scan(opts["shard-n"] or min(opts["n"], 5000), root)
        if "ray" in parts and opts["ray-n"] > 0:
            on_ray(opts["ray-n"], opts["actors"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

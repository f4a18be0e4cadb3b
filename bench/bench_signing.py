"""Signing benchmark: hash+sign and verify a multi-GB package against plain SHA-256 on all cores.

Generates a package of a few safetensors-shaped files, one much larger than the rest (by default
2 GB: 60 % in one file, the rest in three), seals it into a local store, then in one run:

* limit: ``openssl dgst -sha256`` with one process per core, each over all the files at once
  (all cores busy, the same bytes); the machine's SHA-256 throughput is cores x bytes / wall,
  so the fastest possible hashing of the package takes wall / cores.
* for context: ``openssl dgst -sha256`` with one process per file, at most one per core
  (``xargs -P``), which one dominant file bounds.
* for context: ``openssl speed -multi <cores>``, SHA-256 compute on every core with no I/O.
* studbook sign: re-hash the stored package (a thread per core) and sign with an EC P-256 key
  (model-signing), storing the signature.
* studbook verify: re-hash, recompute the id, check the signature and the signer.

Both package layouts are measured, sealed from the same files: ``sha256-shard-tree`` (the
default: files cut in 64 MiB shards hashed on every core, so one dominant file does not leave
cores idle) and plain per-file ``sha256`` (each file on one core: the largest file bounds it).

Each measurement is taken ``--repeat`` times with the page cache warm (files are read once
before), the best is kept, and the ratio of throughputs (limit time / our time) is printed for
signing and for verification, with the CPU use of our process (1.0 = every core busy).

    nice -n 10 .venv/bin/python bench/bench_signing.py --size-gb 2

Options: ``--dominant`` (share of the largest file, default 0.6), ``--repeat`` (default 3),
``--workers``, ``--file-digests``, ``--workdir``, ``--json`` (write the results there too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "operator"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from studbook.artifacts import (  # noqa: E402
    DigestParams,
    KeySigner,
    Lineage,
    Store,
    TrustedKey,
    TrustPolicy,
    Verifier,
    sign_artifact,
)
from studbook.artifacts.digest import FILE_DIGESTS, default_workers  # noqa: E402

GB = 1000**3
BLOCK = 16 * 1024 * 1024


def write_safetensors(path: Path, size: int, seed: int) -> None:
    """A file shaped like safetensors (length-prefixed JSON header, then tensor bytes)."""
    header = json.dumps(
        {"weight": {"dtype": "BF16", "shape": [size // 2], "data_offsets": [0, size]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    block = bytearray(os.urandom(BLOCK))
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        left = size - 8 - len(header)
        i = 0
        while left > 0:
            block[:8] = (seed * 1_000_003 + i).to_bytes(8, "little")
            n = min(left, BLOCK)
            f.write(block[:n])
            left -= n
            i += 1


def make_package(root: Path, size_gb: float, dominant: float) -> Path:
    src = root / "model"
    src.mkdir(parents=True)
    total = int(size_gb * GB)
    big = int(total * dominant)
    rest = (total - big) // 3
    write_safetensors(src / "model-00001-of-00004.safetensors", big, 1)
    for i in range(3):
        write_safetensors(src / f"model-0000{i + 2}-of-00004.safetensors", rest, i + 2)
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return src


def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(BLOCK):
                pass


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> Timing:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) + (
        c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime
    )
    return Timing(wall, cpu)


def best_of(fns: dict[str, tuple[Callable[[], Any], list[Path]]], repeat: int) -> dict[str, Timing]:
    """Run every measurement once per round, round robin, so a change of machine load hits all
    of them alike; keep each one's fastest run. Each one's files are read first (warm cache)."""
    runs: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, (fn, files) in fns.items():
            warm(files)
            runs[name].append(timed(fn))
    return {name: min(ts, key=lambda t: t.wall) for name, ts in runs.items()}


def openssl_all_cores(files: list[Path], cores: int) -> None:
    args = ["openssl", "dgst", "-sha256", *map(str, files)]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL) for _ in range(cores)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("openssl failed")


def openssl_per_file(files: list[Path], cores: int) -> None:
    cmd = (
        f"printf '%s\\0' {' '.join(shlex.quote(str(f)) for f in files)}"
        f" | xargs -0 -n1 -P{cores} openssl dgst -sha256 > /dev/null"
    )
    subprocess.run(cmd, shell=True, check=True)


def openssl_speed(cores: int) -> float:
    """SHA-256 bytes/s of ``openssl speed`` on every core at once: compute only, no file I/O."""
    args = ["-multi", str(cores), "-evp", "sha256", "-bytes", "4194304", "-seconds", "2"]
    out = subprocess.run(
        ["openssl", "speed", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in reversed(out.splitlines()):
        m = re.search(r"([\d.]+)k\s*$", line)
        if m:
            return float(m.group(1)) * 1000
    raise RuntimeError(f"cannot read openssl speed output: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="package size (default 2)")
    parser.add_argument("--dominant", type=float, default=0.6, help="share of the largest file")
    parser.add_argument("--workers", type=int, default=0, help="hashing threads (default: cores)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--file-digests",
        default=",".join(FILE_DIGESTS),
        help="package layouts to measure (default: both sha256-shard-tree and plain sha256)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    cores = args.workers or default_workers()
    layouts = [x for x in args.file_digests.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="studbook-bench-", dir=args.workdir))
    try:
        print(f"generating {args.size_gb} GB in {work} ...", file=sys.stderr, flush=True)
        src = make_package(work, args.size_gb, args.dominant)
        store = Store.open(work / "store")
        lineage = Lineage(
            operator="import",
            config_hash="sha256:" + "0" * 64,
            code_version="bench",
        )
        ids = {
            fd: store.seal(src, lineage, params=DigestParams(file_digest=fd)).id for fd in layouts
        }
        shutil.rmtree(src)
        first = Path(store.package_path(ids[layouts[0]])) / "files"
        files = sorted(p for p in first.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)

        key = ec.generate_private_key(ec.SECP256R1())
        key_path = work / "key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        policy = TrustPolicy(
            (
                TrustedKey(
                    key.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                ),
            )
        )
        import model_signing  # noqa: F401  (import cost is not hashing)

        def signer_of(artifact: str) -> Callable[[], None]:
            sig_dir = Path(store.package_path(artifact)) / "signatures"

            def sign() -> None:
                for f in sig_dir.iterdir():
                    f.unlink()
                sign_artifact(store, artifact, KeySigner(key_path), workers=cores)

            return sign

        def verifier_of(artifact: str) -> Callable[[], None]:
            return lambda: Verifier(store, policy, workers=cores).verify(artifact) and None

        def files_of(artifact: str) -> list[Path]:
            base = Path(store.package_path(artifact)) / "files"
            return sorted(p for p in base.rglob("*") if p.is_file())

        speeds: list[float] = []
        fns: dict[str, tuple[Callable[[], Any], list[Path]]] = {
            "speed": (lambda: speeds.append(openssl_speed(cores)), []),
            "limit": (lambda: openssl_all_cores(files, cores), files),
            "per_file": (lambda: openssl_per_file(files, cores), files),
        }
        for fd, artifact in ids.items():
            fns[f"sign {fd}"] = (signer_of(artifact), files_of(artifact))
            fns[f"verify {fd}"] = (verifier_of(artifact), files_of(artifact))
        timings = best_of(fns, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    speed = max(speeds)
    limit = timings["limit"].wall / cores
    rate = lambda t: total / t / GB  # noqa: E731
    results: dict[str, Any] = {
        "bytes": total,
        "files": len(files),
        "largest_share": args.dominant,
        "cores": cores,
        "openssl_all_cores_limit_s": limit,
        "openssl_all_cores_GBps": rate(limit),
        "openssl_per_file_s": timings["per_file"].wall,
        "openssl_speed_GBps": speed / GB,
    }
    print(
        f"package: {total / GB:.2f} GB in {len(files)} files, largest {args.dominant:.0%};"
        f" {cores} cores"
    )
    print(
        f"openssl dgst -sha256, {cores} processes over all files: limit {limit:.2f} s"
        f" ({rate(limit):.2f} GB/s)"
    )
    per_file = timings["per_file"].wall
    print(
        f"openssl dgst -sha256, one process per file (-P{cores}): {per_file:.2f} s"
        f" ({rate(per_file):.2f} GB/s)"
    )
    print(
        f"openssl speed -multi {cores} (compute only, no I/O): {speed / GB:.2f} GB/s"
        f" -> {total / speed:.2f} s"
    )
    for fd in ids:
        for step in ("sign", "verify"):
            t = timings[f"{step} {fd}"]
            ratio, vs_speed, busy = limit / t.wall, total / speed / t.wall, t.cpu / t.wall / cores
            results[f"{step}[{fd}]"] = {
                "s": t.wall,
                "GBps": rate(t.wall),
                "ratio": ratio,
                "ratio_vs_speed": vs_speed,
                "cpu_busy": busy,
            }
            label = f"studbook {step} ({fd})"
            print(
                f"{label:<36} {t.wall:.2f} s ({rate(t.wall):.2f} GB/s)  ratio {ratio:.2f}"
                f" (vs speed {vs_speed:.2f})  cpu busy {busy:.0%}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Throughput of the object codec, and what importing it costs a fresh interpreter.

Data: synthesized PostgreSQL heap pages (8 KiB pages of pgbench_accounts-like tuples:
page header, line pointers, tuple headers, sequential keys, blank-padded filler; zstd
compresses them about as well as a real pgbench_accounts file, ~45x at level 1) and
random bytes; `--relation FILE` adds a real file (a relation segment, a WAL segment).

For each data set, zstd levels 1 and 3 (and no compression), with and without AES-256-GCM:
encode and decode MB/s of plaintext (MB = 10^6 bytes, best of --repeat runs, in 1 MiB
input chunks, one thread). Then zstd's own threads (threads=2) on one stream, and two
streams encoded at once on two Python threads, which is how backups use both cores.
Import figures: `python -X importtime` for pgwarden.codec and for what it loads on first
use (zstandard; cryptography's AES-GCM and HKDF), and the wall time of a fresh
interpreter importing pgwarden.codec against one that imports nothing (median of 15).

`--wal DIR` measures only what fetching WAL costs: the decode of each file in DIR (real
16 MiB segments), encoded as the agent archives them (zstd level 1, 1 MiB records, with
and without AES-256-GCM) and fed in 1 MiB pieces as storage hands them over, nothing
written. Cases: an object as pgwarden wrote them before zstd frames carried a checksum,
decoded with SHA-256 (what a fetch cost before); a new object with SHA-256; a new object
with verify="frame" (what WalArchive.fetch does now). Figures are the CPU time of the
decoding thread and the wall time, in ms per segment: for each file the best of
--repeat runs, then the mean over the files.

Prints JSON on stdout (and to --json FILE); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgwarden.codec import Key, decode, encode
from pgwarden.codec.format import SALT_SIZE, TRAILER, ObjectHeader, Seal
from pgwarden.codec.keys import object_cipher

MIB = 1 << 20
PAGE_SIZE = 8192


def log(message: str) -> None:
    print(f"[codec] {message}", file=sys.stderr, flush=True)


def heap_pages(total: int) -> bytes:
    """`total` bytes of 8 KiB heap pages holding pgbench_accounts-like tuples."""
    tuple_length = 24 + 12 + 85  # tuple header, aid/bid/abalance, filler char(84) varlena
    stride = (tuple_length + 7) & ~7
    per_page = (PAGE_SIZE - 24) // (stride + 4)
    pages, aid = [], 1
    for number in range(total // PAGE_SIZE):
        page = bytearray(PAGE_SIZE)
        lsn = 0x16B_3C28 + number * 0x2000
        lower, upper = 24 + 4 * per_page, PAGE_SIZE - per_page * stride
        header = (lsn >> 32, lsn & 0xFFFF_FFFF, 0, 0, lower, upper, PAGE_SIZE, PAGE_SIZE | 4, 0)
        struct.pack_into("<IIHHHHHHI", page, 0, *header)
        offset = PAGE_SIZE
        for item in range(per_page):
            offset -= stride
            struct.pack_into("<I", page, 24 + 4 * item, offset | 1 << 15 | tuple_length << 17)
            ctid = (number & 0xFFFF, number >> 16, item + 1)
            struct.pack_into(
                "<IIIHHHHHB", page, offset, 740 + aid // 1000, 0, 0, *ctid, 3, 0x0902, 24
            )
            struct.pack_into("<iii", page, offset + 24, aid, (aid - 1) // 100_000 + 1, 0)
            page[offset + 36] = 85 << 1 | 1
            page[offset + 37 : offset + 37 + 84] = b" " * 84
            aid += 1
        pages.append(bytes(page))
    return b"".join(pages)


def chunks_of(data: bytes, size: int = MIB) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def best_time(work: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(
    chunks: list[bytes], *, compression: str, level: int, key: Key | None, threads: int, repeat: int
) -> dict[str, Any]:
    size = sum(len(c) for c in chunks)
    encoded: list[bytes] = []

    def run_encode() -> None:
        encoded[:] = encode(chunks, compression=compression, level=level, key=key, threads=threads)

    def run_decode() -> None:
        for _ in decode(encoded, keys=key):
            pass

    encode_s = best_time(run_encode, repeat)
    decode_s = best_time(run_decode, repeat)
    stored = sum(len(c) for c in encoded)
    return {
        "compression": compression,
        "level": level if compression == "zstd" else None,
        "encryption": "aes-256-gcm" if key else "none",
        "zstd_threads": threads,
        "encode_mb_s": round(size / encode_s / 1e6),
        "decode_mb_s": round(size / decode_s / 1e6),
        "ratio": round(size / stored, 2),
    }


def parallel_encode(chunks: list[bytes], *, level: int, key: Key | None, repeat: int) -> float:
    """Aggregate MB/s of two streams encoded at once on two Python threads."""
    size = sum(len(c) for c in chunks)

    def one() -> None:
        for _ in encode(chunks, level=level, key=key):
            pass

    def both() -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(one) for _ in range(2)]:
                future.result()  # re-raises a worker's exception

    return round(2 * size / best_time(both, repeat) / 1e6)


def python(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, check=True, env=env
    )


def importtime_ms(statement: str, modules: tuple[str, ...], env: dict[str, str]) -> float:
    """Cumulative import time of `modules` (top-level lines of -X importtime), median of 7."""
    samples = []
    python("-c", statement, env=env)  # writes the bytecode cache
    for _ in range(7):
        result = python("-X", "importtime", "-c", statement, env=env)
        total = 0
        for line in result.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] in modules:  # top level: no indentation
                total += int(parts[1])
        samples.append(total / 1000)
    return round(statistics.median(samples), 2)


def startup_ms(statement: str, env: dict[str, str]) -> float:
    samples = []
    python("-c", statement, env=env)
    for _ in range(15):
        started = time.perf_counter()
        python("-c", statement, env=env)
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 1)


def import_figures() -> dict[str, Any]:
    """Import costs with bytecode cached, as an installed package has it (this machine sets
    PYTHONDONTWRITEBYTECODE, which would make every run compile the sources)."""
    aead = "cryptography.hazmat.primitives.ciphers.aead"
    hkdf = "cryptography.hazmat.primitives.kdf.hkdf"
    loaded = (
        "import sys; before = set(sys.modules); import pgwarden.codec; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        return {
            "pgwarden_codec_ms": importtime_ms(
                "import pgwarden.codec", ("pgwarden", "pgwarden.codec"), env
            ),
            "zstandard_ms": importtime_ms("import zstandard", ("zstandard",), env),
            "cryptography_aesgcm_hkdf_ms": importtime_ms(
                f"import {aead}, {hkdf}", ("cryptography", aead, hkdf), env
            ),
            "interpreter_bare_ms": startup_ms("pass", env),
            "interpreter_with_codec_ms": startup_ms("import pgwarden.codec", env),
            "modules_loaded_by_codec": python("-c", loaded, env=env).stdout.split(),
        }


def object_before_frame_checksums(data: bytes, *, level: int, key: Key | None) -> bytes:
    """`data` encoded as pgwarden did before zstd frames carried a content checksum."""
    import zstandard  # noqa: PLC0415 - only this case needs it directly

    header = ObjectHeader(
        compression="zstd",
        encryption="none" if key is None else "aes-256-gcm",
        chunk_size=MIB,
        plaintext_length=None,
        key_id=None if key is None else key.key_id,
        salt=os.urandom(SALT_SIZE),
    )
    seal = Seal(header, None if key is None else object_cipher(key, header.salt))
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=False)
    frame = compressor.compress(data)
    records = [
        seal.seal(index, frame[start : start + MIB], final=False)
        for index, start in enumerate(range(0, len(frame), MIB))
    ]
    trailer = TRAILER.pack(hashlib.sha256(data).digest(), len(data))
    records.append(seal.seal(len(records), trailer, final=True))
    return header.raw + b"".join(records)


def wal_decode(directory: Path, repeat: int) -> dict[str, Any]:
    """ms per segment of decoding real WAL segments (see the module's docstring)."""
    files = sorted(path for path in directory.iterdir() if path.is_file())
    key = Key.generate()
    rows: list[dict[str, Any]] = []
    for encryption, k in (("none", None), ("aes-256-gcm", key)):
        times: dict[str, list[tuple[float, float]]] = {}
        for path in files:
            data = path.read_bytes()
            new = b"".join(encode(chunks_of(data), level=1, key=k))
            cases = {
                "before: old object, sha256": (
                    object_before_frame_checksums(data, level=1, key=k),
                    "sha256",
                ),
                "new object, sha256": (new, "sha256"),
                "new object, frame": (new, "frame"),
            }
            for case, (blob, verify) in cases.items():
                pieces = chunks_of(blob)
                runs = []
                for _ in range(repeat):
                    cpu, wall = time.thread_time(), time.perf_counter()
                    for _ in decode(pieces, keys=k, verify=verify):
                        pass
                    runs.append((time.thread_time() - cpu, time.perf_counter() - wall))
                times.setdefault(case, []).append(
                    (min(r[0] for r in runs), min(r[1] for r in runs))
                )
        for case, per_file in times.items():
            row = {
                "case": case,
                "encryption": encryption,
                "cpu_ms_per_segment": round(1000 * statistics.mean(c for c, _ in per_file), 2),
                "wall_ms_per_segment": round(1000 * statistics.mean(w for _, w in per_file), 2),
            }
            log(json.dumps(row))
            rows.append(row)
    sha256_cpu = []
    for path in files:
        data = path.read_bytes()
        runs = []
        for _ in range(repeat):
            cpu = time.thread_time()
            hashlib.sha256(data).digest()
            runs.append(time.thread_time() - cpu)
        sha256_cpu.append(min(runs))
    return {
        "segments": len(files),
        "segment_mib": round(sum(p.stat().st_size for p in files) / len(files) / MIB, 1),
        "repeat": repeat,
        "sha256_of_a_segment_cpu_ms": round(1000 * statistics.mean(sha256_cpu), 2),
        "decode": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of each data set (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument("--relation", type=Path, help="also measure this file")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--wal", type=Path, help="measure only the decode of the WAL files here")
    args = parser.parse_args()

    if args.wal:
        text = json.dumps({"cpus": os.cpu_count(), **wal_decode(args.wal, args.repeat)}, indent=2)
        print(text, flush=True)
        if args.json:
            args.json.write_text(text + "\n")
        return 0

    log(f"preparing {args.mib} MiB data sets")
    data_sets = {
        "heap_pages": heap_pages(args.mib * MIB),
        "random": os.urandom(args.mib * MIB),
    }
    if args.relation:
        data_sets[f"file:{args.relation.name}"] = args.relation.read_bytes()
    key = Key.generate()
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "chunk_mib": 1,
        "data_mib": {name: round(len(data) / MIB, 1) for name, data in data_sets.items()},
        "throughput": [],
        "parallel_two_streams": [],
    }
    for name, data in data_sets.items():
        chunks = chunks_of(data)
        cases = [("zstd", level, k, 0) for level in (1, 3) for k in (None, key)]
        cases += [("zstd", level, key, 2) for level in (1, 3)]
        cases += [("none", 1, k, 0) for k in (None, key)]
        for compression, level, k, threads in cases:
            row = measure(
                chunks,
                compression=compression,
                level=level,
                key=k,
                threads=threads,
                repeat=args.repeat,
            )
            row = {"data": name, **row}
            log(json.dumps(row))
            result["throughput"].append(row)
        for level in (1, 3):
            mb_s = parallel_encode(chunks, level=level, key=key, repeat=args.repeat)
            row = {"data": name, "level": level, "encryption": "aes-256-gcm", "encode_mb_s": mb_s}
            log(json.dumps(row))
            result["parallel_two_streams"].append(row)
    log("measuring import times")
    result["import"] = import_figures()
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

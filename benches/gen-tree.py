#!/usr/bin/env python3
"""Generate a reproducible benchmark tree of mixed small and large files.

Usage: gen-tree.py DEST [--seed N] [--small N] [--large-scale F]

Everything comes from one seeded PRNG (random.Random(seed)): the same seed gives the same paths
and the same bytes on every machine (CPython's Random is stable across versions for the calls
used here). No network, no external word list.

Content is a mix meant to compress like real image layers (gzip -6 ratio about 2.2x overall):
  source  source-code-like lines (identifiers, keywords, indentation)   ~5x with gzip -6
  text    prose from a Zipf-weighted pseudo-word vocabulary             ~2.5-3x
  log     timestamped log lines with random ids and numbers             ~3-4x
  binary  fixed-size little-endian records, partly random               ~1.5-2x
  random  incompressible bytes (stand-in for images, archives, ...)     1x

Files are cut from per-kind pools (several MiB each) at random offsets, so neighbouring files
do not repeat each other within deflate's 32 KiB window.

Prints a JSON summary (file count, bytes per kind, sha256 over every path and content) on stdout.
"""

import argparse
import hashlib
import itertools
import json
import os
import struct
import sys

import random

POOL_BYTES = 8 << 20  # per content kind
MIB = 1 << 20

# Large files: (path, kind, size in MiB). About 100 MiB in all.
LARGE = [
    ("data/logs/app.log", "log", 32),
    ("data/db/records.bin", "binary", 24),
    ("srv/static/bundle.js", "source", 18),
    ("srv/static/media.bin", "random", 14),
    ("usr/share/doc/manual.txt", "text", 12),
]

# Small files: kind -> (share of files, file name extensions).
SMALL_KINDS = [
    ("source", 0.45, [".rs", ".py", ".go", ".js", ".c", ".h"]),
    ("text", 0.25, [".md", ".txt", ".html", ".json"]),
    ("binary", 0.15, [".bin", ".dat", ".idx"]),
    ("random", 0.15, [".png", ".jpg", ".gz"]),
]

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "qu", "x"]
KEYWORDS = ["let", "fn", "if", "else", "for", "while", "return", "match", "self", "pub",
            "struct", "impl", "use", "const", "static", "mut", "def", "class", "import"]
TYPES = ["u32", "u64", "usize", "String", "Vec<u8>", "Option<Self>", "Result<()>", "bool",
         "&str", "HashMap<String, u64>", "Box<dyn Error>", "i64", "f64"]
LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR"]


class Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        rng = self.rng
        vocab = set()
        while len(vocab) < 4000:
            vocab.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
        self.words = sorted(vocab)
        rng.shuffle(self.words)
        # Zipf-like frequencies, as in natural language and in code identifiers.
        self.cum = list(itertools.accumulate(1.0 / (i + 1) ** 1.05 for i in range(len(self.words))))
        # Code reuses a smaller set of identifiers, and more often.
        self.idents = self.words[:600]
        self.icum = list(itertools.accumulate(1.0 / (i + 1) ** 1.2 for i in range(600)))

    def w(self, k):
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)

    def ident(self, k):
        return self.rng.choices(self.idents, cum_weights=self.icum, k=k)

    def text_pool(self):
        rng, out, size = self.rng, [], 0
        while size < POOL_BYTES:
            para = []
            for _ in range(rng.randint(2, 8)):
                s = " ".join(self.w(rng.randint(5, 20)))
                para.append(s[0].upper() + s[1:] + rng.choice(".....?!"))
            # wrap at ~72 columns
            line, lines = "", []
            for word in " ".join(para).split(" "):
                if len(line) + len(word) > 72:
                    lines.append(line)
                    line = word
                else:
                    line = f"{line} {word}" if line else word
            lines.append(line)
            chunk = "\n".join(lines) + "\n\n"
            out.append(chunk)
            size += len(chunk)
        return "".join(out).encode()

    def source_pool(self):
        rng, out, size, depth = self.rng, [], 0, 1
        while size < POOL_BYTES:
            a, b, c, d = self.ident(4)
            t = rng.choice(TYPES)
            n = rng.randint(0, 4096)
            r = rng.random()
            if r < 0.06:
                line, depth = f"pub fn {a}_{b}(&self, {c}: {t}) -> Result<{rng.choice(TYPES)}> {{", 1
                out.append("\n")
            elif r < 0.22:
                line = f"let {a} = {b}.{c}({d}, {n});"
            elif r < 0.32:
                line = f"if {a}.{b} > {n} {{"
                depth = min(depth + 1, 6)
            elif r < 0.44 and depth > 1:
                line = "}"
                depth -= 1
            elif r < 0.52:
                line = "// " + " ".join(self.w(rng.randint(3, 12)))
            elif r < 0.60:
                line = f"self.{a}.insert({b}.to_string(), {c}_{d});"
            elif r < 0.66:
                line = f"return Err(Error::{a.capitalize()}{b.capitalize()}({c}));"
            elif r < 0.72:
                line = f"use crate::{a}::{{{b}, {c}, {d}}};"
            elif r < 0.80:
                line = f"{rng.choice(KEYWORDS)} {a} in {b}.iter().filter(|x| x.{c} != {n}) {{"
                depth = min(depth + 1, 6)
            else:
                line = f"{a}.{b}(&mut {c}, \"{d}\")?;"
            line = "    " * depth + line + "\n"
            out.append(line)
            size += len(line)
        return "".join(out).encode()

    def log_pool(self):
        rng, out, size, t = self.rng, [], 0, 1_700_000_000_000
        while size < POOL_BYTES:
            t += rng.randint(0, 900)
            s, ms = divmod(t, 1000)
            hh, mm, ss = (s // 3600) % 24, (s // 60) % 60, s % 60
            mod = "::".join(self.w(2))
            line = (f"2024-03-{1 + (s // 86400) % 28:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z "
                    f"{rng.choice(LEVELS):5} {mod}: {' '.join(self.w(rng.randint(2, 8)))} "
                    f"req={rng.getrandbits(32):08x} latency={rng.randint(1, 2000)}ms "
                    f"status={rng.choice((200, 200, 200, 204, 301, 404, 500))}\n")
            out.append(line)
            size += len(line)
        return "".join(out).encode()

    def binary_pool(self):
        # 16-byte records: increasing id and timestamp, small enums, a noisy value, a random
        # 16-bit field and padding.
        rng, out, ts = self.rng, bytearray(), 0
        pack = struct.Struct("<IBBHIHxx").pack
        for i in range(POOL_BYTES // 16):
            ts += rng.randint(1, 300)
            out += pack(i, rng.randint(0, 7), rng.choice((0, 0, 1, 3)),
                        max(0, min(65535, int(rng.gauss(1000, 150)))), ts, rng.getrandbits(16))
        return bytes(out)

    def random_pool(self):
        return self.rng.randbytes(POOL_BYTES)

    def piece(self, pool, n):
        """n bytes cut from pool at random offsets (several cuts for files larger than 1 MiB)."""
        parts, left = [], n
        while left:
            k = min(left, MIB)
            off = self.rng.randrange(len(pool) - k)
            parts.append(pool[off:off + k])
            left -= k
        return b"".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--small", type=int, default=20000, help="number of small files (1-16 KiB)")
    ap.add_argument("--large-scale", type=float, default=1.0, help="multiply large-file sizes")
    args = ap.parse_args()

    g = Gen(args.seed)
    rng = g.rng
    pools = {
        "text": g.text_pool(),
        "source": g.source_pool(),
        "log": g.log_pool(),
        "binary": g.binary_pool(),
        "random": g.random_pool(),
    }

    files = []  # (relative path, kind, size)
    for path, kind, mib in LARGE:
        files.append((path, kind, int(mib * MIB * args.large_scale)))

    # Small files in a package-like hierarchy: 20 top dirs x 10 subdirs.
    tops = [f"{w}" for w in g.words[:20]]
    subs = [f"{w}" for w in g.words[20:30]]
    kinds, shares = zip(*[(k, s) for k, s, _ in SMALL_KINDS])
    exts = {k: e for k, _, e in SMALL_KINDS}
    for i in range(args.small):
        kind = rng.choices(kinds, weights=shares)[0]
        d = f"src/{rng.choice(tops)}/{rng.choice(subs)}"
        name = f"{rng.choice(g.words)}_{i:05d}{rng.choice(exts[kind])}"
        files.append((f"{d}/{name}", kind, rng.randint(1024, 16 * 1024)))

    digest = hashlib.sha256()
    by_kind = {k: 0 for k in pools}
    dest = args.dest
    for path, kind, size in sorted(files):
        data = g.piece(pools[kind], size)
        full = os.path.join(dest, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        digest.update(path.encode() + b"\0" + data)
        by_kind[kind] += size

    total = sum(by_kind.values())
    json.dump({
        "seed": args.seed,
        "files": len(files),
        "small_files": args.small,
        "bytes": total,
        "bytes_by_kind": by_kind,
        "random_share": round(by_kind["random"] / total, 3),
        "content_sha256": digest.hexdigest(),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()

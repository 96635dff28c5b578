#!/usr/bin/env python3
"""Checks that every relative link in README.md and docs/*.md names an existing file, and that
every #fragment names a heading of that file (GitHub's anchors: lower case, punctuation dropped,
spaces as hyphens).

Usage: docs/tools/check-links.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        text = re.sub(r"[^\w\- ]", "", text)
        out.add(text.replace(" ", "-"))
    return out


def main():
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    bad = []
    count = 0
    for f in files:
        for target in LINK.findall(f.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:: not a file here
            count += 1
            path, _, fragment = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.is_file():
                bad.append(f"{f.relative_to(ROOT)}: {target}: no such file")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                bad.append(f"{f.relative_to(ROOT)}: {target}: no such heading")
    for line in bad:
        print(line)
    print(f"{count} relative links in {len(files)} files, {len(bad)} broken")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks that every statement of an old README is still in README.md or docs/*.md.

Usage: docs/tools/check-coverage.py OLD_README [docs/tools/reworded.txt]
where OLD_README is, for the split into docs/, `git show 1f96838:README.md` saved to a file.

A statement is a sentence of prose, a table row or a line of a code block. Each must appear,
modulo whitespace, Markdown emphasis, links and list markers, in the new README.md or a file of
docs/. REWORDED is a file of deliberate rewordings (history-narrating lines, "the original"):
blocks of an `old:` line and a `new:` line; the old text is then looked for as the new text.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def normalize(text):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: keep their text
    text = text.replace("**", "")
    text = re.sub(r"\s+", " ", text)
    return text.strip()


def statements(markdown):
    """Sentences, table rows and code lines of a Markdown text."""
    out = []
    in_code = False
    paragraph = []

    def flush():
        if not paragraph:
            return
        text = normalize(" ".join(paragraph))
        paragraph.clear()
        # A bold title at the start of a bullet ("Heat." before its text) is a heading now.
        for sentence in re.split(r"(?<=[.!?:;])\s+(?=[A-Z`(*\"])", text):
            sentence = sentence.strip()
            if len(sentence) > 3:
                out.append(sentence)

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            in_code = not in_code
            continue
        if in_code:
            if line.strip():
                out.append(normalize(line))
            continue
        if line.startswith("|"):
            flush()
            if not re.match(r"^\|[-|]+\|$", line.strip()):
                out.append(normalize(line))
            continue
        if line.startswith("#"):
            flush()
            continue
        if not line.strip():
            flush()
            continue
        stripped = re.sub(r"^\s*(?:[-*]|\d+\.)\s+", "", line)
        if stripped != line:  # a new list item starts a new paragraph
            flush()
        paragraph.append(stripped)
    flush()
    return out


def reworded(path):
    pairs = []
    old = None
    for line in Path(path).read_text().splitlines():
        if line.startswith("old: "):
            old = normalize(line[5:])
        elif line.startswith("new: ") and old is not None:
            pairs.append((old, normalize(line[5:])))
            old = None
    return pairs


def main():
    old = Path(sys.argv[1]).read_text()
    pairs = reworded(sys.argv[2]) if len(sys.argv) > 2 else []
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    new = " ".join(normalize(f.read_text().replace("\n", " ")) for f in files)
    # Table rows and code lines are compared cell by cell and line by line, so a new text with
    # different wrapping still matches; prose as a whole sentence.
    new_lines = set()
    headings = set()
    for f in files:
        for line in f.read_text().splitlines():
            new_lines.add(normalize(line))
            if line.startswith("#"):
                headings.add(normalize(line.lstrip("#")).strip("`"))
    missing = []
    used = set()
    items = statements(old)
    for item in items:
        text = item
        for i, (o, n) in enumerate(pairs):
            if o in text:
                text = text.replace(o, n)
                used.add(i)
        if text in new or text in new_lines:
            continue
        # A bold title that is now a heading ("Heat." became "## Heat").
        title = text.rstrip(".:").strip("`")
        if title in headings or any(h.startswith(title) for h in headings if len(title) > 3):
            continue
        # A bold title that is now a heading: "Heat. At ..." became "## Heat" and "At ...".
        m = re.match(r"^([^.]{1,80})\. (.*)$", text)
        if m and m.group(2) in new and m.group(1) in new:
            continue
        missing.append(item)
    for i, (o, _) in enumerate(pairs):
        if i not in used:
            print(f"rewording not used: {o}")
    for item in missing:
        print(f"MISSING: {item}")
    print(f"{len(items) - len(missing)} of {len(items)} statements found, {len(missing)} missing, "
          f"{len(used)} reworded")
    sys.exit(1 if missing or len(used) != len(pairs) else 0)


if __name__ == "__main__":
    main()

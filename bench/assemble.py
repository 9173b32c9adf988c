#!/usr/bin/env python3
"""Builds docs/BENCHMARKS.md from the per-benchmark reports in docs/benchmarks/NAME.md.

Each report is written by its benchmark (bench/NAME/run.sh) and starts with a short summary; this
script puts them together in a fixed order behind an introduction and a table of the summaries,
rewriting each report's relative links (plots, files) so they resolve from docs/. Run it after
any benchmark: `python3 bench/assemble.py` (bench/run.sh does it after each run).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = ROOT / "docs" / "benchmarks"
OUT = ROOT / "docs" / "BENCHMARKS.md"
# The order: the five reproductions, then kechi against its peers.
ORDER = ["allocator", "tmpfiles", "leaks", "cow", "restart", "slowload", "footprint"]

INTRO = """# Benchmarks

What kechi does to memory and to restarts, measured with real interpreters and app servers, and
kechid's own cost beside its peers. Every figure below was produced by a script in `bench/`, run
with one command (`sudo bench/run.sh NAME`, or `--quick` for a run of under five minutes); each
section names its command, the machine and the date. The machines these ran on are shared and
noisy: compare figures within one table (as ratios), not across sections.

| benchmark | summary |
| --- | --- |
"""


def summary(text: str) -> str:
    """The first paragraph after the report's title, on one line."""
    body = re.sub(r"^# .*\n", "", text, count=1).strip()
    para = body.split("\n\n", 1)[0]
    return " ".join(line.strip() for line in para.splitlines())


def relink(text: str) -> str:
    """Links relative to docs/benchmarks/ made relative to docs/."""

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^/|^#", target):
            return m.group(0)
        if target.startswith("../"):
            return f"{m.group(1)}({target[3:]})"
        return f"{m.group(1)}(benchmarks/{target})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, text)


def main() -> int:
    names = [n for n in ORDER if (PARTS / f"{n}.md").exists()]
    names += sorted(p.stem for p in PARTS.glob("*.md") if p.stem not in ORDER)
    if not names:
        print("no reports in docs/benchmarks/", file=sys.stderr)
        return 1
    out = [INTRO]
    texts = {n: (PARTS / f"{n}.md").read_text() for n in names}
    for n in names:
        out.append(f"| [{n}](#{n}) | {summary(texts[n])} |\n")
    for n in names:
        body = relink(texts[n])
        # Each report's own title becomes a section of this page, anchored by its name.
        body = re.sub(r"^# (.*)$", lambda m: f'<a id="{n}"></a>\n\n## {m.group(1)}', body,
                      count=1, flags=re.M)
        out.append("\n" + demote(body))
    OUT.write_text("".join(out))
    print(f"wrote {OUT.relative_to(ROOT)} from {len(names)} reports: {', '.join(names)}")
    return 0


def demote(body: str) -> str:
    """Sub-headings one level down, under the section heading (## stays for the title)."""
    lines = body.splitlines(keepends=True)
    seen_title = False
    for i, line in enumerate(lines):
        if line.startswith("## ") and not seen_title:
            seen_title = True
            continue
        if re.match(r"^#{2,5} ", line):
            lines[i] = "#" + line
    return "".join(lines)


if __name__ == "__main__":
    sys.exit(main())

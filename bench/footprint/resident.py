#!/usr/bin/python3
"""Which parts of a process's own executable are resident: where a supervisor's USS goes.

    resident.py PID [--symbols FILE]

Reads /proc/PID/maps and /proc/PID/pagemap (root) for the mappings of the process's executable
and prints, per ELF section, its size and how much of it is mapped into the process (present
pages). With --symbols (an unstripped build of the same binary, identical layout), the resident
pages of .text are also attributed to the crate of the function that covers them, so the code
that stays mapped can be traced to the dependency that brought it. A page is counted whole for
each section or crate it overlaps.
"""

import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def sections(path):
    """(name, file offset, size, address) of every allocated section of the ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit(f"{path}: not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    out = []
    for name, typ, flags, addr, off, size, *_ in heads:
        if flags & 0x2 and typ != 8:  # SHF_ALLOC, not SHT_NOBITS
            out.append((names[name:names.index(b"\0", name)].decode(), off, size, addr))
    return out


def resident_offsets(pid, exe):
    """File offsets (page-aligned) of the executable's pages that are present in PID."""
    present = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or parts[5] != exe:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            off = int(parts[2], 16)
            n = (hi - lo) // PAGE
            pm.seek(lo // PAGE * 8)
            entries = struct.unpack(f"<{n}Q", pm.read(n * 8))
            for i, e in enumerate(entries):
                if e >> 63:  # present in RAM
                    present.add(off + i * PAGE)
    return present


def crate_of(symbol):
    m = re.match(r"<?&?(?:mut )?([A-Za-z_][A-Za-z0-9_]*)::", symbol)
    return m.group(1) if m else "(other)"


def text_by_crate(symfile, text, present):
    """KiB of resident .text pages per crate, from the symbols of an unstripped twin."""
    name, off, size, addr = text
    out = subprocess.run(["nm", "-C", "-S", "--defined-only", symfile], capture_output=True,
                         text=True, check=True).stdout
    pages = collections.defaultdict(set)
    for line in out.splitlines():
        p = line.split(" ", 3)
        if len(p) < 4 or p[2] not in "tTwW":
            continue
        a, s = int(p[0], 16), int(p[1], 16)
        if s == 0 or not addr <= a < addr + size:
            continue
        first = (a - addr + off) // PAGE
        last = (a + s - 1 - addr + off) // PAGE
        for pg in range(first, last + 1):
            if pg * PAGE in present:
                pages[crate_of(p[3])].add(pg)
    return sorted(((len(v) * PAGE // 1024, k) for k, v in pages.items()), reverse=True)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    pid = argv[0]
    symfile = argv[argv.index("--symbols") + 1] if "--symbols" in argv else None
    exe = os.readlink(f"/proc/{pid}/exe")
    present = resident_offsets(pid, exe)
    secs = sections(exe)
    print(f"{exe}: {len(present) * PAGE // 1024} KiB resident of the mapped file")
    print(f"{'section':<22}{'KiB':>8}{'resident KiB':>14}")
    for name, off, size, _ in secs:
        first, last = off // PAGE, (off + size - 1) // PAGE
        res = sum(1 for pg in range(first, last + 1) if pg * PAGE in present)
        print(f"{name:<22}{size // 1024:>8}{res * PAGE // 1024:>14}")
    if symfile:
        text = next(s for s in secs if s[0] == ".text")
        print(f"\nresident .text by crate (symbols from {symfile})")
        for kib, crate in text_by_crate(symfile, text, present):
            print(f"{kib:>8} KiB  {crate}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

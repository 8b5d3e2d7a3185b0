#!/bin/sh
# Writes the kernel the x86_64 test guests boot:
#
#   tests/vm/pvh-kernel.sh BZIMAGE OUT
#
# OUT is the kernel inside BZIMAGE, uncompressed, when that is an ELF with a
# PVH entry point (the Xen ELF note 18, XEN_ELFNOTE_PHYS32_ENTRY; Debian's
# amd64 kernel has one). QEMU's -kernel boots such an ELF at that entry, with
# no firmware loader and no decompressor: under TCG those take about 6.5 s
# of each guest's boot. Otherwise OUT is a copy of BZIMAGE, booted as before.
# Uses the boot protocol's header ("HdrS" at 0x202, setup_sects at 0x1f1,
# payload_offset and payload_length at 0x248 and 0x24c).
set -eu
in=$1
out=$2
tmp=$out.tmp
say() { echo "pvh-kernel: $*" >&2; }

# The little-endian unsigned number of $2 bytes at offset $1 of $in.
num() { od -An -t"u$2" -j "$1" -N "$2" "$in" | tr -d ' '; }

extract() {
    # The boot protocol's "HdrS" at 0x202 marks a bzImage header.
    [ "$(od -An -tx1 -j 514 -N 4 "$in" 2>/dev/null | tr -d ' ')" = 48647253 ] || { say "no bzImage header"; return 1; }
    setup_sects=$(num 497 1)
    [ "$setup_sects" -ne 0 ] || setup_sects=4
    start=$(( (setup_sects + 1) * 512 + $(num 584 4) ))
    length=$(num 588 4)
    magic=$(od -An -tx1 -j "$start" -N 4 "$in" | tr -d ' ')
    case $magic in
        fd377a58) unpack='xz -dc' ;;
        28b52ffd) unpack='zstd -qdc' ;;
        1f8b*) unpack='gzip -dc' ;;
        *) say "payload format $magic not known"; return 1 ;;
    esac
    # xz and zstd stop at the end of their stream; gzip warns about the
    # trailing size word, which is harmless.
    tail -c +"$((start + 1))" "$in" | head -c "$length" | $unpack >"$tmp" 2>/dev/null || [ -s "$tmp" ]
    [ "$(od -An -tx1 -N 4 "$tmp" | tr -d ' ')" = 7f454c46 ] || { say "no ELF inside"; return 1; }
    # Only a Xen note of that type: a bare 0x00000012 may be a note's size.
    readelf -n "$tmp" | grep -Eq '^ *Xen .*(\(0x00000012\)|PHYS32_ENTRY)' || { say "the ELF has no PVH entry"; return 1; }
}

if extract; then
    mv "$tmp" "$out"
    say "$out: the uncompressed kernel, booted at its PVH entry"
else
    rm -f "$tmp"
    cp "$in" "$out"
    say "$out: a copy of $in (no PVH entry found)"
fi

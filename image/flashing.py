"""What people need to flash an image safely: its sha256 (the line
`sha256sum -c` reads) and its block map (bmaptool's format 2.0: the ranges
that hold data, each with its sha256, so `bmaptool copy` writes only those
and checks them).

Both come from one look at the image: its data ranges are found with
SEEK_DATA/SEEK_HOLE, as bmaptool finds them (FIEMAP), and the whole image's
digest and the ranges' digests are computed side by side, one thread each
(hashlib lets go of the GIL while it hashes), instead of the image being read
once for sha256 and again by `bmaptool create`. A hole is hashed as the
zeros it reads as, without reading it.
"""

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

BLOCK_SIZE = 4096           # bmaptool's default, the block the map counts in
CHUNK = 1 << 20
ZEROS = memoryview(bytes(CHUNK))

BMAP_HEAD = """\
<?xml version="1.0" ?>
<!-- The block map of {name}: the blocks that hold data, which are all that
     has to be written to a device (bmaptool copy), each range with the
     sha256 of its blocks. Made by rackboot (image/flashing.py) in the
     format of bmaptool 3.6 (version 2.0). -->

<bmap version="2.0">
    <!-- Image size in bytes -->
    <ImageSize> {size} </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> {block_size} </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> {blocks} </BlocksCount>

    <!-- Count of mapped blocks: {mapped_percent:.1f}% -->
    <MappedBlocksCount> {mapped} </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The checksum of this bmap file. When it is calculated, the value of
         the checksum has be zero (all ASCII "0" symbols).  -->
    <BmapFileChecksum> {own_checksum} </BmapFileChecksum>

    <!-- The block map: ranges of blocks or single blocks, each with the
         sha256 of its blocks ('chksum'). -->
    <BlockMap>
"""
BMAP_TAIL = """\
    </BlockMap>
</bmap>
"""


def data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of the file that hold data, in order."""
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:         # ENXIO: nothing but a hole from here on
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        position = end


def mapped_blocks(segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (first, last) block ranges that hold the segments' bytes, merged
    where they touch."""
    ranges: list[tuple[int, int]] = []
    for start, end in segments:
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
        else:
            ranges.append((first, last))
    return ranges


def _hash_bytes(fd: int, start: int, end: int, digest) -> None:
    while start < end:
        chunk = os.pread(fd, min(CHUNK, end - start), start)
        if not chunk:
            return
        digest.update(chunk)
        start += len(chunk)


def whole_digest(path: Path, segments: list[tuple[int, int]], size: int) -> str:
    """sha256 of the whole file: its data read, its holes as zeros."""
    digest, position = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in [*segments, (size, size)]:
            while position < start:         # a hole
                step = min(CHUNK, start - position)
                digest.update(ZEROS[:step])
                position += step
            _hash_bytes(fd, start, end, digest)
            position = max(position, end)
    finally:
        os.close(fd)
    return digest.hexdigest()


def range_digests(path: Path, ranges: list[tuple[int, int]]) -> list[str]:
    """sha256 of each block range, as bmaptool computes it (the last block
    may be cut short by the end of the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digests = []
        for first, last in ranges:
            digest = hashlib.sha256()
            _hash_bytes(fd, first * BLOCK_SIZE, (last + 1) * BLOCK_SIZE, digest)
            digests.append(digest.hexdigest())
        return digests
    finally:
        os.close(fd)


def bmap_text(name: str, size: int, ranges: list[tuple[int, int]], digests: list[str]) -> str:
    blocks = -(-size // BLOCK_SIZE)
    mapped = sum(last - first + 1 for first, last in ranges)
    lines = [f'        <Range chksum="{digest}"> {first}-{last} </Range>\n' if first != last
             else f'        <Range chksum="{digest}"> {first} </Range>\n'
             for (first, last), digest in zip(ranges, digests)]
    fields = dict(name=name, size=size, block_size=BLOCK_SIZE, blocks=blocks, mapped=mapped,
                  mapped_percent=mapped * 100.0 / blocks if blocks else 0.0)
    # The file's own checksum is taken with that field all zeros (BmapCopy checks it so).
    unsigned = BMAP_HEAD.format(**fields, own_checksum="0" * 64) + "".join(lines) + BMAP_TAIL
    own = hashlib.sha256(unsigned.encode()).hexdigest()
    return BMAP_HEAD.format(**fields, own_checksum=own) + "".join(lines) + BMAP_TAIL


def checksum_and_bmap(image: Path) -> tuple[Path, Path]:
    """image.sha256 and image.bmap beside image; both paths."""
    size = image.stat().st_size
    fd = os.open(image, os.O_RDONLY)
    try:
        segments = list(data_segments(fd, size))
    finally:
        os.close(fd)
    ranges = mapped_blocks(segments)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        whole = pool.submit(whole_digest, image, segments, size)
        digests = pool.submit(range_digests, image, ranges)
        checksum, bmap = image.with_name(image.name + ".sha256"), image.with_name(image.name + ".bmap")
        checksum.write_text(f"{whole.result()}  {image.name}\n")
        bmap.write_text(bmap_text(image.name, size, ranges, digests.result()))
    return checksum, bmap

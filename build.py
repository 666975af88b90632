#!/usr/bin/env python3
"""rackboot: build the images of racks of lab machines from their profiles.

    ./build.py VERB PROFILE... [-o DIR]

The pipeline: profile (firstboot/profile.py) -> render (image/render.py) ->
rootfs (image/rootfs.py) -> disk (image/jumphost.py, image/disk.py) -> boot
(image/qemu.py), and for Raspberry Pis rootfs (arm64) -> TFTP tree and NFS
root (image/netboot.py), or an SD card (image/sdcard.py). Run
`./build.py VERB --help` for each verb. Exit status: 0 success, 1 failure,
2 bad input (nothing written).

The verbs are declared in image/cli.py, checked and run by image/verbs.py.
On a fresh machine the first run installs the virtualenv and re-executes
itself inside it; --help installs nothing.
"""

import sys

from image import cli

if __name__ == "__main__":
    sys.exit(cli.main())

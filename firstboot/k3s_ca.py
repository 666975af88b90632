"""The rack's cluster CA, from the secret store onto the jumphost before k3s
first starts, so that every jumphost of a rack (a spare flashed from the same
image, a replacement) runs the same CA: the Pis keep trusting their server,
and the CA hash in k3s's secure tokens (K10<hash>::...) stays the same.

k3s uses CA files it finds in DATA/server/tls at its first start instead of
making its own (k3s docs, "Using Custom CA Certificates"); from then on the
authoritative copy is in its datastore's bootstrap data, and changing the
files under a running cluster is what `k3s certificate rotate-ca` is for.
So the files are placed only where k3s has not started yet:

  - none of them on the machine, no datastore: all are placed (staged in a
    directory beside tls/, each written whole and synced, then renamed in);
  - the same files already there: nothing to do (every later run);
  - some there, the same as stored, no datastore: the rest are placed (a run
    cut short between two renames);
  - any file there that differs from the stored one, or a datastore with
    files missing: refused, nothing placed. This server already has another
    CA, and replacing it would break its cluster (use k3s certificate
    rotate-ca, or reflash the jumphost).

The profile's k3s.ca names the stored archive (firstboot/k3s_ca_files.py
says what it holds and checks it). Keys are written 0600, certificates 0644,
as k3s writes them (certutil WriteKey, WriteCert).
"""

import os
import shutil
import tempfile
from pathlib import Path

from firstboot import rack_model, secrets
from firstboot.errors import BadInput
from firstboot.k3s_ca_files import REQUIRED, is_key, read
from firstboot.layout import Layout
from firstboot.secretref import SecretRef

ROTATE_HINT = ("the stored CA is not the one this k3s server was set up with: change its CA with "
               "`k3s certificate rotate-ca` (k3s docs, 'Rotating Custom CA Certificates') and store the new files, "
               "or reflash the jumphost to start the rack's cluster again with the stored CA")


def install(layout: Layout, rack: str, access=None) -> dict | None:
    """The stored CA of rack (its model's k3s.ca) in place under
    layout.k3s_tls; None when the rack has none (k3s makes its own)."""
    model = rack_model.read_rack(layout, rack)
    if model is None or model.k3s.ca is None:
        return None
    return install_from(model.k3s.ca, layout.k3s_tls, layout.datastore, access)


def install_from(ref: SecretRef, tls: Path, datastore: Path, access=None) -> dict:
    stored = read((access or secrets.access)(ref), str(ref)).as_dict()
    present = _present(tls)
    if differing := sorted(name for name, content in present.items() if content != stored[name]):
        raise BadInput(f"{ref}: this k3s server already has another cluster CA ({tls}: "
                       f"{', '.join(differing)} differ from the stored ones); not replacing it", hint=ROTATE_HINT)
    missing = [name for name in REQUIRED if name not in present]
    if missing and datastore.exists():
        raise BadInput(f"{ref}: k3s's datastore ({datastore}) exists but {tls} lacks {', '.join(missing)}; "
                       "k3s has started here already, and the CA is placed only before its first start",
                       hint=ROTATE_HINT)
    if missing:
        _place(tls, {name: stored[name] for name in missing})
    return {"reference": str(ref), "placed": missing}


def _present(tls: Path) -> dict[str, bytes]:
    present = {}
    for name in REQUIRED:
        try:
            present[name] = (tls / name).read_bytes()
        except FileNotFoundError:
            continue
    return present


def _place(tls: Path, files: dict[str, bytes]) -> None:
    """Each file written whole in a staging directory beside tls, then all
    renamed into tls: nothing half-written is ever where k3s reads."""
    tls.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".rackboot-ca-", dir=tls.parent))
    try:
        for number, (name, content) in enumerate(sorted(files.items())):
            _write(staging / str(number), content, 0o600 if is_key(name) else 0o644)
        for directory in sorted({tls, *((tls / name).parent for name in files)}):
            if not directory.is_dir():         # k3s's own tls directories are root's alone
                directory.mkdir()
                directory.chmod(0o700)
        for number, name in enumerate(sorted(files)):
            os.rename(staging / str(number), tls / name)
        for directory in {tls, *((tls / name).parent for name in files)}:
            _sync(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(path: Path, content: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, mode)


def _sync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


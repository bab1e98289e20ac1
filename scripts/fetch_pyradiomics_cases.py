"""Fetch pyradiomics' other labelled test volumes (brain2: MR brain lesion; lung1: CT lung lesion).

../shared/data holds brain1, breast1 and lung2; pyradiomics' source release on PyPI (3.1.0, BSD-3,
Harvard Medical School) also carries brain2 and lung1. The default glue's last data set trains on
them (configs/data/default_glue_cases_extra.json). The archive is checked against PyPI's sha256;
only the four files are kept. Usage: python scripts/fetch_pyradiomics_cases.py [OUT_DIR]
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import urllib.request
from pathlib import Path

URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
       "pyradiomics-3.1.0.tar.gz")
SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
FILES = ("brain2_image.nrrd", "brain2_label.nrrd", "lung1_image.nrrd", "lung1_label.nrrd", "LICENSE.txt")


def main(out: Path) -> None:
    if all((out / name).exists() for name in FILES):
        print(f"already there: {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "pyradiomics-3.1.0.tar.gz"
    if not archive.exists():
        part = archive.with_suffix(".part")
        try:  # into a .part first: a cut-off download never passes for the archive
            urllib.request.urlretrieve(URL, part)
        except OSError as exc:
            part.unlink(missing_ok=True)
            sys.exit(f"fetch_pyradiomics_cases: cannot download {URL}: {getattr(exc, 'reason', exc)}")
        part.rename(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        archive.unlink()
        sys.exit(f"fetch_pyradiomics_cases: {URL} has sha256 {digest}, expected {SHA256}")
    with tarfile.open(archive) as tar:
        for name in FILES:
            member = tar.getmember(f"pyradiomics-3.1.0/{'data/' if name.endswith('.nrrd') else ''}{name}")
            with tar.extractfile(member) as src:
                (out / name).write_bytes(src.read())
    archive.unlink()
    print(f"wrote {', '.join(FILES)} to {out}")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/pyradiomics-extra")
    try:
        main(target)
    except (OSError, tarfile.TarError) as exc:  # a folder that cannot be written, a disk that is full
        sys.exit(f"fetch_pyradiomics_cases: cannot write {target}: {exc}")

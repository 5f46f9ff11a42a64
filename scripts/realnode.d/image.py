"""Write a docker-archive image (one layer) from a root filesystem directory, for `ctr images import`: the pod
images of the real-node tier are built here, with no registry.

    python3 image.py ROOTFS NAME:TAG OUT.tar [--entrypoint '["/prog", "arg"]'] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("tag")
    parser.add_argument("out", type=Path)
    parser.add_argument("--entrypoint", type=json.loads, default=None, help="a JSON list")
    parser.add_argument("--env", action="append", default=["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"])
    args = parser.parse_args()

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(args.rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(args.rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    data = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": args.env, "Entrypoint": args.entrypoint, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/realnode.d/image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [args.tag], "Layers": ["layer.tar"]}]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as out:
        for name, blob in (("layer.tar", data), (config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            out.addfile(info, io.BytesIO(blob))
    tmp.rename(args.out)
    print(f"{args.tag}: {args.out} ({len(data) / 2**20:.1f} MiB layer)")


if __name__ == "__main__":
    main()

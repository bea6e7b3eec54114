"""``python -m guilomo.push``: upload an adapter, peft export or merged folder to the Hub.

    python -m guilomo.push folder=<dir> repo_id=<user>/<name> [private=true]
    python -m guilomo.push folder=<dir> dry_run=true     # list the files, upload nothing

Log in first (``hf auth login``, or ``HF_TOKEN``). The folder is checked and only its
own files are sent (:func:`guilomo.hub.upload_files`).
"""

from __future__ import annotations

import sys

from guilomo.hub import push_to_hub, upload_files
from guilomo.utils.cli import parse_args, run

USAGE = (
    "usage: python -m guilomo.push folder=<dir> repo_id=<user>/<name> [private=true] [dry_run=true]"
)
DEFAULTS = {"folder": None, "repo_id": None, "private": False, "dry_run": False}


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["folder"] or (not args["repo_id"] and not args["dry_run"]):
        raise SystemExit(f"{USAGE}\nerror: folder= and repo_id= are required")
    files = upload_files(args["folder"])
    print(f"{len(files)} files from {args['folder']}: {', '.join(files)}")
    if not args["dry_run"]:
        print(push_to_hub(args["folder"], args["repo_id"], private=args["private"]))
    return files


if __name__ == "__main__":
    run(main)

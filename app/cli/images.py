"""Image commands: pull, images, rmi, image inspect, image prune, load, save, login, logout."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from app.cli.output import SubCommands, human_duration_since, human_size, parse_rfc3339, print_json_lines, print_table
from app.cli.progress import PullPrinter
from engine import Engine, ImageRecord, InvalidArgument, KiteboxError, parse_reference

__all__ = ["register"]


def register(commands: SubCommands, image_group: SubCommands) -> None:
    for group, name in ((commands, "pull"), (image_group, "pull")):
        p = group.add_parser(name, help="Download an image from a registry")
        p.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
        p.add_argument("reference")
        p.set_defaults(handler=pull)
    for group, name, aliases in ((commands, "images", []), (image_group, "ls", ["list"])):
        p = group.add_parser(name, aliases=aliases, help="List images")
        p.add_argument("-a", "--all", action="store_true", help="Show all images")
        p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
        p.add_argument("--digests", action="store_true", help="Show digests")
        p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
        p.add_argument("--format", choices=["table", "json"], default="table")
        p.add_argument("reference", nargs="?", help="Only images of this repository[:tag]")
        p.set_defaults(handler=images)
    for group, name in ((commands, "rmi"), (image_group, "rm")):
        p = group.add_parser(name, help="Remove one or more images")
        p.add_argument("-f", "--force", action="store_true", help="Force removal of the image")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.set_defaults(handler=rmi)
    p = image_group.add_parser("inspect", help="Display detailed information on one or more images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=image_inspect)
    p = image_group.add_parser("prune", help="Remove unused images")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.set_defaults(handler=image_prune)
    for group in (commands, image_group):
        p = group.add_parser("load", help="Load an image from a tar archive or OCI layout")
        p.add_argument("-i", "--input", required=True, help="Read from tar archive file or OCI layout directory")
        p.add_argument("-q", "--quiet", action="store_true")
        p.set_defaults(handler=load)
        p = group.add_parser("save", help="Save one or more images to a tar archive")
        p.add_argument("-o", "--output", required=True, help="Write to a file")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.set_defaults(handler=save)
    p = commands.add_parser("login", help="Log in to a registry")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="Password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="Take the password from stdin")
    p.add_argument("server", nargs="?", default="docker.io")
    p.set_defaults(handler=login)
    p = commands.add_parser("logout", help="Log out from a registry")
    p.add_argument("server", nargs="?", default="docker.io")
    p.set_defaults(handler=logout)


async def pull(engine: Engine, args: argparse.Namespace) -> int:
    ref = parse_reference(args.reference)
    if not args.quiet:
        print(f"{ref.tag or ref.digest}: Pulling from {ref.familiar_repository}", file=sys.stderr)
    printer = None if args.quiet else PullPrinter()
    record = await engine.pull(args.reference, on_progress=printer)
    if args.quiet:
        print(ref.familiar if ref.digest is None else str(ref))
        return 0
    digest = record.repo_digests[0].split("@", 1)[1] if record.repo_digests else record.manifest_digest
    print(f"Digest: {digest}", file=sys.stderr)
    print(f"Status: Image is up to date for {ref.familiar}", file=sys.stderr)
    print(str(ref))
    return 0


def _image_rows(records: list[ImageRecord], repository: str | None) -> list[dict[str, str | ImageRecord]]:
    rows: list[dict[str, str | ImageRecord]] = []
    for record in records:
        digests = {d.split("@", 1)[0]: d.split("@", 1)[1] for d in record.repo_digests}
        names = [parse_reference(tag) for tag in record.repo_tags]
        if names:
            for ref in names:
                rows.append({"repo": ref.familiar_repository, "tag": ref.tag or "<none>",
                             "digest": digests.get(ref.repository, "<none>"), "record": record})
        elif digests:
            for repo, digest in digests.items():
                rows.append({"repo": parse_reference(f"{repo}@{digest}").familiar_repository, "tag": "<none>",
                             "digest": digest, "record": record})
        else:
            rows.append({"repo": "<none>", "tag": "<none>", "digest": "<none>", "record": record})
    if repository:
        want = parse_reference(repository) if ":" in repository.rsplit("/", 1)[-1] else None
        want_repo = (want or parse_reference(repository)).familiar_repository
        rows = [r for r in rows if r["repo"] == want_repo and (want is None or r["tag"] == want.tag)]
    return rows


async def images(engine: Engine, args: argparse.Namespace) -> int:
    records = await engine.images()
    records.sort(key=lambda r: r.created or "", reverse=True)
    rows = _image_rows(records, args.reference)
    if args.quiet:
        seen: list[str] = []
        for row in rows:
            record = row["record"]
            assert isinstance(record, ImageRecord)
            short = record.id if args.no_trunc else record.id[7:19]
            if short not in seen:
                seen.append(short)
        print("\n".join(seen)) if seen else None
        return 0
    if args.format == "json":
        objects = []
        for row in rows:
            record = row["record"]
            assert isinstance(record, ImageRecord)
            created = parse_rfc3339(record.created)
            objects.append({
                "Containers": "N/A", "CreatedAt": record.created or "",
                "CreatedSince": human_duration_since(created), "Digest": row["digest"],
                "ID": record.id if args.no_trunc else record.id[7:19], "Repository": row["repo"],
                "SharedSize": "N/A", "Size": human_size(record.size), "Tag": row["tag"],
                "UniqueSize": "N/A", "VirtualSize": human_size(record.size),
            })
        print_json_lines(objects)
        return 0
    headers = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "CREATED", "SIZE"]
    table: list[list[str]] = []
    for row in rows:
        record = row["record"]
        assert isinstance(record, ImageRecord)
        table.append([
            str(row["repo"]), str(row["tag"]), *([str(row["digest"])] if args.digests else []),
            record.id if args.no_trunc else record.id[7:19],
            human_duration_since(parse_rfc3339(record.created)), human_size(record.size),
        ])
    print_table(headers, table)
    return 0


async def rmi(engine: Engine, args: argparse.Namespace) -> int:
    status = 0
    for text in args.images:
        try:
            report = await engine.remove_images([text], force=args.force)
        except KiteboxError as err:
            # Like docker: report each failure and carry on with the other images.
            print(f"Error response from daemon: {err}", file=sys.stderr)
            status = err.exit_code
            continue
        for item in report:
            print(f"{item.action}: {item.what}")
    return status


async def image_inspect(engine: Engine, args: argparse.Namespace) -> int:
    documents = [await engine.inspect_image(text) for text in args.images]
    print(json.dumps(documents, indent=4))
    return 0


async def image_prune(engine: Engine, args: argparse.Namespace) -> int:
    if not args.force and sys.stdin.isatty():
        what = "all images without at least one container associated to them" if args.all else "all dangling images"
        answer = input(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    report, freed = await engine.prune_images(all_images=args.all)
    if report:
        print("Deleted Images:")
        for item in report:
            print(f"{item.action.lower()}: {item.what}")
        print()
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


async def load(engine: Engine, args: argparse.Namespace) -> int:
    names = await engine.load(Path(args.input))
    for name in names:
        print(f"Loaded image{' ID' if name.startswith('sha256:') else ''}: {name}")
    return 0


async def save(engine: Engine, args: argparse.Namespace) -> int:
    await engine.save(list(args.images), Path(args.output))
    return 0


async def login(engine: Engine, args: argparse.Namespace) -> int:
    username = args.username
    password = args.password
    if args.password_stdin:
        if password:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        if not username:
            raise InvalidArgument("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    if not username:
        if not sys.stdin.isatty():
            raise InvalidArgument("cannot perform an interactive login from a non TTY device")
        username = input("Username: ").strip()
    if not password:
        if not sys.stdin.isatty():
            raise InvalidArgument("cannot perform an interactive login from a non TTY device")
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise InvalidArgument("login: username and password must not be empty")
    await engine.login(args.server, username, password)
    print("Login Succeeded")
    return 0


async def logout(engine: Engine, args: argparse.Namespace) -> int:
    removed = await engine.logout(args.server)
    if removed:
        print(f"Removing login credentials for {args.server}")
    else:
        print(f"Not logged in to {args.server}")
    return 0

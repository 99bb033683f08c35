#!/usr/bin/env python3
"""Write or check firstboot/answers.schema.json, the answer file's JSON Schema generated
from the agent's model (mailwarden.firstboot.answers).

    firstboot/schema.py                 print it
    firstboot/schema.py --out FILE      write it
    firstboot/schema.py --check FILE    exit 1 when FILE is not current (the lint tier)

Run with the project's virtualenv (.venv/bin/python), which has the agent installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailwarden.firstboot.answers import answers_schema


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, metavar="FILE")
    group.add_argument("--check", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    text = answers_schema()
    if args.check:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run firstboot/schema.py --out {args.check}",
                  file=sys.stderr)
            return 1
        print(f"{args.check} is current")
    elif args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""python -m firstboot {run,status}: the first-boot agent.

run     the steps, in order (the rackboot-firstboot unit runs this at boot)
status  which step it is on, what failed and why
"""

import argparse
import logging
import sys

from firstboot import agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firstboot", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run the first-boot steps")
    run.add_argument("--role", choices=("jumphost", "pi"), required=True,
                     help="what this image is; the rack is found at boot")
    verbs.add_parser("status", help="show the steps' progress and any failure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.verb == "run":
        return agent.run(args.role)
    print(agent.describe_status())
    return 0


if __name__ == "__main__":
    sys.exit(main())

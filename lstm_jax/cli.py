"""Flag parsing for the entry points: a bad flag is one line on stderr and exit code 2, not a traceback."""

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with its errors (unknown config keys, wrong types, missing config files) made short."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: a key the config does not have
        key = str(error).strip("'\"")
        message = f"unknown config key {key!r}; see the config file for the keys it accepts"
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = "; ".join(lines[:1] + [line for line in lines if "Errno" in line][:1])
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

"""`fishtts ...` and `python -m fishtts ...`."""

import sys


def main(*args, prog_name: str = "fishtts", **kwargs):
    try:  # (the imports take a second or two: a Ctrl-C meanwhile is an interruption, not a traceback)
        from core.cli import main as cli
        from server.cli import serve
        from webui.cli import webui
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    cli.add_command(serve)
    cli.add_command(webui)
    return cli(*args, prog_name=prog_name, **kwargs)


if __name__ == "__main__":
    main()

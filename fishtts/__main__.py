"""`fishtts ...` and `python -m fishtts ...`."""

import signal
import sys


def main(*args, prog_name: str = "fishtts", **kwargs):
    # The imports take a second or two. A Ctrl-C meanwhile is held until they end: raised inside torch's
    # C++ initialization it aborted the process, elsewhere it printed a traceback.
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        from core.cli import main as cli
        from server.cli import serve
        from webui.cli import webui
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    cli.add_command(serve)
    cli.add_command(webui)
    return cli(*args, prog_name=prog_name, **kwargs)


if __name__ == "__main__":
    main()

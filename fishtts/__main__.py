"""`fishtts ...` and `python -m fishtts ...`."""

from core.cli import main
from server.cli import serve
from webui.cli import webui

main.add_command(serve)
main.add_command(webui)

if __name__ == "__main__":
    main(prog_name="fishtts")

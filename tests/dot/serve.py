"""Serve the test project with waitress (a production WSGI server) on 127.0.0.1 and an ephemeral port.

``python -m tests.dot.serve PORT_FILE``: binds, writes the port it got to PORT_FILE, then serves until killed,
or until the process that started it is gone (an interrupted test run leaves no server behind).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from django.core.wsgi import get_wsgi_application
from waitress import create_server


def _exit_with_parent() -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _device_pages_at(port: int) -> None:
    """DOT answers device authorization requests with OAUTH_DEVICE_VERIFICATION_URI as configured, and clients
    need it absolute; the port is known only once bound, before the first request."""
    from django.conf import settings
    from oauth2_provider.settings import oauth2_settings

    page = f"http://127.0.0.1:{port}/o/device/"
    settings.OAUTH2_PROVIDER.update(
        OAUTH_DEVICE_VERIFICATION_URI=page, OAUTH_DEVICE_VERIFICATION_URI_COMPLETE=page + "?user_code={user_code}"
    )
    oauth2_settings.reload()


def main(port_file: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.dot.settings")
    application = get_wsgi_application()
    server = create_server(application, host="127.0.0.1", port=0, threads=8, ident="dot-test")
    port = server.effective_port  # type: ignore[union-attr]
    _device_pages_at(port)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    server.run()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

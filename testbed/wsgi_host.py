"""gunicorn's entry point for the OpenStack WSGI apps, which read their config from sys.argv on import.

env: WSGI_NAME, WSGI_TARGET (module with `application`), WSGI_ARGV ("--config-file a --config-file b")
"""

import importlib
import os
import sys

sys.argv = [os.environ.get("WSGI_NAME", "wsgi"), *os.environ.get("WSGI_ARGV", "").split()]
application = importlib.import_module(os.environ["WSGI_TARGET"]).application
